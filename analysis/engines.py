"""Engines grouped by their create_engine() call site and the program's call chain above it (a
shared helper's callers apart): how many, disposed or not, what they held.

The site is where to change the program, so everything about Engines is summed per site:
created/disposed/destroyed counts, the pool configuration, the connections their pools opened
and how those ended, and the most connections the site's Engines held at once (with how
many Engines held them: one pool's bound times the number of live pools).
"""

from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .join import EngineLife, Life
from .model import EngineSite
from .sites import relative_site

UNKNOWN_SITE = "an unknown call site"


def _gen_key(gen: Optional[int]) -> str:
    return str(gen) if gen is not None else "unknown"


def _key(el: EngineLife, cwd: Optional[str]):
    """(call site, chain) with paths relative to the program's directory; the chain outermost first."""
    site = relative_site(el.site, cwd) or UNKNOWN_SITE
    chain = tuple(relative_site(f, cwd) or f for f in reversed(el.chain))
    return site, chain


def summarise(engines: Sequence[EngineLife], lives: Sequence[Life], cwd: Optional[str],
              to_s: Callable[[int], float]) -> List[EngineSite]:
    """One EngineSite per call site and chain, most connections first."""
    sites: Dict[tuple, EngineSite] = {}
    engine_events: Dict[tuple, list] = {}
    for el in engines:
        site = _key(el, cwd)
        s = sites.get(site)
        if s is None:
            s = sites[site] = EngineSite(call_site=site[0], created=0, disposed=0, connections=0,
                                         chain=list(site[1]))
            engine_events[site] = []
        if el.t_create is not None:
            s.created += 1
            engine_events[site].append((el.t_create, 1))
            if el.t_end is not None:
                engine_events[site].append((el.t_end, -1))
        if el.inherited_from is not None:
            pass  # a forked child's copy: its parent's create_engine() is the one counted
        elif el.disposed:
            s.disposed += 1
        if el.destroy is not None and el.inherited_from is None:
            cause = el.destroy.cause
            s.destroyed[cause] = s.destroyed.get(cause, 0) + 1
        _describe_pool(s, el)

    # Connections per site: counts by cause, and the most held at once (sweep).
    conn_events: Dict[tuple, list] = {}
    for life in lives:
        el = life.engine
        if el is None or life.failed:
            continue
        site = _key(el, cwd)
        s = sites[site]
        s.connections += 1
        if life.cause is not None:
            s.connections_by_cause[life.cause] = s.connections_by_cause.get(life.cause, 0) + 1
            if life.cause == ev.GC:
                g = _gen_key(life.generation)
                s.gc_by_generation[g] = s.gc_by_generation.get(g, 0) + 1
        evs = conn_events.setdefault(site, [])
        if life.t_open is not None:
            evs.append((life.t_open, 1, id(el)))
        if life.t_end is not None:
            evs.append((life.t_end, -1, id(el)))

    for site, evs in conn_events.items():
        _sweep_connections(sites[site], evs, to_s)
    for site, evs in engine_events.items():
        evs.sort()
        live = best = 0
        for _, d in evs:
            live += d
            best = max(best, live)
        sites[site].max_live_engines = best

    return sorted(sites.values(), key=lambda s: (-s.connections, -s.created, s.call_site, s.chain))


def _describe_pool(s: EngineSite, el: EngineLife) -> None:
    """The site's pool class, size and URLs: the first Engine that says them."""
    if s.pool_class is None and el.pool_class:
        s.pool_class = el.pool_class
    if s.pool_size is None and el.pool_size is not None:
        s.pool_size = el.pool_size
    if s.max_overflow is None and el.max_overflow is not None:
        s.max_overflow = el.max_overflow
    if el.url and el.url not in s.urls and len(s.urls) < 5:
        s.urls.append(el.url)


def _sweep_connections(s: EngineSite, evs: list, to_s: Callable[[int], float]) -> None:
    """The most connections of the site open at once, when, and over how many Engines."""
    evs.sort(key=lambda x: (x[0], x[1]))  # ends before opens at the same instant
    live = 0
    per_engine: Counter = Counter()
    for t, d, eid in evs:
        live += d
        per_engine[eid] += d
        if per_engine[eid] == 0:
            del per_engine[eid]
        if live > s.max_live_connections:
            s.max_live_connections = live
            s.max_live_connections_t_s = to_s(t)
            s.engines_at_max = len(per_engine)


def pool_bound(site: EngineSite) -> Optional[int]:
    """The most connections one pool of this site can hold (QueuePool-like), None when unbounded."""
    if site.pool_class and "null" in site.pool_class.lower():
        return None
    if site.pool_size is None:
        return None
    overflow = site.max_overflow if site.max_overflow is not None else 0
    if overflow < 0:
        return None  # max_overflow=-1: unbounded
    return site.pool_size + overflow
