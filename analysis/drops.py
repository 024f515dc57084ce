"""Drops: sudden falls in live connections, each explained; and the patterns they repeat.

Connection ends are grouped by what ended them: all the connections one garbage collection
destroyed form one group; the other ends are grouped per cause, process and thread,
consecutive ends no more than ``GAP_S`` apart — one mechanism acting in a burst (a close()
or dispose() loop, the interpreter's shutdown, the process's exit). Independent closes on
different threads that happen to fall close together (NullPool checkins, a pool's overflow)
are not a drop. A group is a *drop* when live connections fell across it by at least
``max(MIN_DROP, DROP_FRACTION × live just before it)`` (opens during the group count against
the fall, so a steady open/close churn is not a drop). The threshold is local so that an
early tooth of 33 out of 50 is a drop even when the capture later peaks in the thousands.

The study's shape (the engine-per-call fixture, tests/synth.engine_per_call) is what this must
find: generation-1 collections every ~6.5 s destroying ~33 connections each (the saw-tooth)
and one generation-2 collection destroying 83 at once (the sudden drop). ``tests/unit/test_analysis_drops.py`` pins it.
"""

import math
import statistics
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .gcwhy import GENERATIONAL
from .join import Collection, Life
from .model import Drop, Pattern
from .sites import app_frame, relative_site
from .timeline import LiveCurve
from .words.drops import explain_collection, explain_group, pattern_text, thread_of

GAP_S = 0.05  # a burst: close() or dispose() loops run sub-ms apart; a pool's overflow closes do not
MIN_DROP = 3
DROP_FRACTION = 0.10
#: Intervals whose coefficient of variation is below this make a "regular" pattern.
REGULAR_CV = 0.35


#: The origin of a connection open when ``--pid`` attached (the agent's conn_open.origin).
ORIGIN_BEFORE_ATTACH = "before attach"


class Origins:
    """Where a group of connections came from: Engines by call site, else their open site."""

    def __init__(self, cwd: Optional[str], thread_names: Optional[Dict[tuple, str]] = None):
        self.cwd = cwd
        self.thread_names = thread_names or {}

    def thread(self, pid: int, tid: Optional[int]) -> Optional[str]:
        """A thread's name (seen on any agent event of that tid), else MainThread for tid == pid."""
        if tid is None:
            return None
        name = self.thread_names.get((pid, tid))
        if name:
            return name
        return "MainThread" if tid == pid else None

    def end_thread(self, life: Life) -> Optional[str]:
        """The name of the thread that ended ``life``."""
        e = life.agent_end
        if e is not None and e.k == ev.CONN_CLOSE and e.thread:  # a destruction names no thread
            return e.thread
        return self.thread(life.pid, life.end_tid)

    def open_site(self, life: Life) -> Optional[str]:
        """The program's frame that opened ``life`` (agent stack), relative to cwd."""
        e = life.family.agent_open  # a fork copy: where its parent opened it
        if e is None or e.k != ev.CONN_OPEN:  # none, or a failed connect's (no stack)
            return None
        if e.before_attach is True:  # --pid: open when the agent came in (tracer/agent/attach.py)
            return ORIGIN_BEFORE_ATTACH
        return relative_site(app_frame(e.stack), self.cwd)

    def engine_site(self, life: Life) -> Optional[str]:
        """The create_engine() call site of the Engine ``life`` belonged to."""
        if life.engine is None:
            return None
        return relative_site(life.engine.site, self.cwd) or "an unknown call site"

    def call_sites(self, lives: Sequence[Life]) -> List[str]:
        """Distinct call sites (engine sites first), most common first."""
        c = Counter()
        for life in lives:
            site = self.engine_site(life) or self.open_site(life)
            if site:
                c[site] += 1
        return [s for s, _ in c.most_common()]


def find_drops(ended: Sequence[Life], curve: LiveCurve, to_s: Callable[[int], float],
               origins: Origins, exit_status=None, drop_collections: Optional[set] = None,
               collector: str = GENERATIONAL) -> List[Drop]:
    """Every sudden fall in live connections, in time order, each with its explanation
    (``collector``: the program's, gcwhy.Thresholds.collector, names its collections).

    ``drop_collections`` (a set) receives the id() of every collection that made a drop."""
    by_collection: Dict[int, List[Life]] = {}
    collections: Dict[int, Collection] = {}
    by_cause: Dict[tuple, List[Life]] = {}
    for life in ended:
        if life.cause == ev.GC and life.collection is not None:
            key = id(life.collection)
            collections[key] = life.collection
            by_collection.setdefault(key, []).append(life)
        else:
            by_cause.setdefault((life.cause, life.generation, life.pid, life.end_tid), []).append(life)

    groups = []  # (lives, collection or None, cause, generation)
    for key, lives in by_collection.items():
        c = collections[key]
        groups.append((lives, c, ev.GC, c.gen if c.gen is not None else lives[0].generation))
    gap = int(GAP_S * 1e9)
    for (cause, gen, _pid, _tid), lives in by_cause.items():
        lives.sort(key=lambda lf: lf.t_end)
        run = [lives[0]]
        for life in lives[1:]:
            if life.t_end - run[-1].t_end <= gap:
                run.append(life)
            else:
                groups.append((run, None, cause, gen))
                run = [life]
        groups.append((run, None, cause, gen))

    drops: List[Drop] = []
    for lives, c, cause, gen in groups:
        if len(lives) < MIN_DROP:
            continue
        t_first = min(lf.t_end for lf in lives)
        t_last = max(lf.t_end for lf in lives)
        before = curve.before(t_first)
        after = curve.after(t_last)
        if before - after < max(MIN_DROP, int(math.ceil(DROP_FRACTION * before))):
            continue
        t_s = to_s(t_first)
        if c is not None:
            if drop_collections is not None:
                drop_collections.add(id(c))
            text = explain_collection(c, lives, origins, t_s, collector)
            thread, site, collected = thread_of(c), relative_site(c.site, origins.cwd), c.collected
        else:
            text = explain_group(cause, lives, origins, t_s, gen, exit_status, collector)
            thread = site = collected = None
        drops.append(Drop(
            t_s=t_s, from_=before, to=after, duration_ms=round((t_last - t_first) / 1e6, 3),
            cause=cause, generation=gen if cause == ev.GC else None, connections=len(lives),
            explanation=text, thread=thread, triggered_at=site, collected=collected,
            call_sites=origins.call_sites(lives)[:5]))
        if c is not None:  # which collection (the agent's numbering: gcwhy reads its gc_start)
            agent_c = c if c.src == "agent" or c.twin is None else c.twin
            drops[-1].pid, drops[-1].cid = agent_c.pid, agent_c.cid
    drops.sort(key=lambda d: d.t_s)
    return drops


def find_patterns(collections: Sequence[Collection], destroyed: Dict[Collection, Sequence[Life]],
                  drop_collections: Optional[set] = None, collector: str = GENERATIONAL) -> List[Pattern]:
    """Per generation, how often a collection destroys connections and how many each time.

    ``destroyed``: the connections each destroyed (attribute.Attribution.destroyed). A regular
    pattern whose collections are mostly drops is the saw-tooth of the live count."""
    by_gen: Dict[Optional[int], List[Collection]] = {}
    for c in collections:
        if destroyed.get(c):
            by_gen.setdefault(c.gen, []).append(c)
    patterns = []
    for gen in sorted(by_gen, key=lambda g: (g is None, g)):
        cs = sorted(by_gen[gen], key=lambda c: c.t_start)
        # Intervals within each process (forked workers collect independently), pooled.
        per_pid: Dict[int, List[Collection]] = {}
        for c in cs:
            per_pid.setdefault(c.pid, []).append(c)
        intervals = [(b.t_start - a.t_start) / 1e9
                     for run in per_pid.values() for a, b in zip(run, run[1:])]
        if len(cs) < 3 or len(intervals) < 2:
            continue
        counts = [len(destroyed[c]) for c in cs]
        every = statistics.median(intervals)
        mean = statistics.mean(intervals)
        cv = statistics.pstdev(intervals) / mean if mean > 0 else float("inf")
        regular = cv <= REGULAR_CV
        each = int(round(statistics.median(counts)))
        lo, hi, total = min(counts), max(counts), sum(counts)
        drops = sum(1 for c in cs if id(c) in (drop_collections or ()))
        text = pattern_text(gen, collector, len(cs), each, lo, hi, total, every, intervals, regular, drops)
        patterns.append(Pattern(
            cause=ev.GC, generation=gen, collections=len(cs), every_s=round(every, 3),
            connections_each=each, min_each=lo, max_each=hi, total=total, regular=regular, text=text,
            drops=drops))
    return patterns
