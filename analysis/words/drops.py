"""Drops and collections in words: where a group of connections came from (``phrase``), what
ended a drop (``explain_collection``, ``explain_group``) and a pattern of collections
(``pattern_text``). analysis/drops.py finds them; the sentences are built here.
"""

from collections import Counter
from typing import TYPE_CHECKING, Dict, Optional, Sequence

from trace_quit.tracer import events as ev

from .collector import GENERATIONAL, a_collection, collection_name
from .numbers import fmt_approx, fmt_int, fmt_s, plural

if TYPE_CHECKING:  # types only: analysis/drops.py imports this module
    from ..drops import Origins
    from ..join import Collection, Life


def phrase(origins: "Origins", lives: Sequence["Life"]) -> str:
    """'83 connections of 83 engines created at X' / '13 connections opened at Y'."""
    engines: Dict[str, set] = {}
    opened = Counter()
    with_engine = 0
    for life in lives:
        if life.engine is not None:
            with_engine += 1
            engines.setdefault(origins.engine_site(life), set()).add(id(life.engine))
        else:
            opened[origins.open_site(life) or "?"] += 1
    n = len(lives)
    eng_part = ""
    if engines:
        items = sorted(engines.items(), key=lambda kv: -len(kv[1]))
        first_site, first = items[0]
        eng_part = "of %s created at %s" % (plural(len(first), "engine"), first_site)
        for site, ids in items[1:3]:
            eng_part += " and %s at %s" % (fmt_int(len(ids)), site)
        if len(items) > 3:
            eng_part += " and %s at %d other sites" % (
                fmt_int(sum(len(ids) for _, ids in items[3:])), len(items) - 3)
    open_part = ""
    known = [(s, k) for s, k in opened.most_common() if s != "?"]
    if known:
        if len(known) == 1 and known[0][1] == sum(opened.values()):
            open_part = "opened at %s" % known[0][0]
        else:
            open_part = "opened at " + ", ".join("%s (%s)" % (s, fmt_int(k)) for s, k in known[:3])
            if len(known) > 3:
                open_part += " and %d other sites" % (len(known) - 3)
    conns = plural(n, "connection")
    if eng_part and not opened:
        return "%s %s" % (conns, eng_part)
    if open_part and not with_engine:
        return "%s %s" % (conns, open_part)
    if eng_part and open_part:
        return "%s (%s %s; %s %s)" % (conns, fmt_int(with_engine), eng_part,
                                        fmt_int(n - with_engine), open_part)
    if eng_part:
        return "%s (%s %s)" % (conns, fmt_int(with_engine), eng_part)
    return conns


def thread_of(c: "Collection") -> Optional[str]:
    """The thread a collection ran on, as the report names it: its name, else 'tid N'."""
    if c.thread:
        return c.thread
    if c.tid is not None:
        return "tid %d" % c.tid
    return None


def explain_collection(c: "Collection", lives: Sequence["Life"], origins: "Origins", t_s: float,
                       collector: str = GENERATIONAL) -> str:
    """'at 66.3 s a generation-2 collection on thread T (10,575 objects) destroyed 83 connections of …'."""
    text = "at %s s %s" % (fmt_s(t_s), a_collection(c.gen, collector))
    thread = thread_of(c)
    if thread:
        text += " on thread %s" % thread
    if c.collected is not None:
        text += " (%s)" % plural(c.collected, "object")
    text += " destroyed " + phrase(origins, lives)
    # A collection runs on whichever thread allocates when it is due (workloads/hidden_threads.py):
    # often one that never touched the database. Say so: the sender is not the opener.
    if c.tid is not None and thread:
        opened_on = {_open_tid(lf) for lf in lives}
        if None not in opened_on and c.tid not in opened_on:
            text += ", on a thread that opened none of them"
    return text


def _open_tid(life: "Life") -> Optional[int]:
    if life.root is not None:
        return None  # a fork copy: opened by another process's thread
    e = life.open_event()
    return e.tid if e is not None else None


def explain_group(cause: str, lives: Sequence["Life"], origins: "Origins", t_s: float,
                  generation: Optional[int], exit_status=None, collector: str = GENERATIONAL) -> str:
    """One sentence for a group of ends that no single collection explains."""
    at = "at %s s " % fmt_s(t_s)
    what = phrase(origins, lives)
    if cause == ev.EXPLICIT_CLOSE:
        by_pool = sum(1 for lf in lives if lf.pool_end)
        disposed = any(lf.engine is not None and lf.engine.t_dispose is not None
                       and lf.engine.t_dispose <= (lf.t_end or 0) for lf in lives)
        threads = Counter(t for t in (origins.end_thread(lf) for lf in lives) if t)
        on = (" on thread %s" % threads.most_common(1)[0][0]) if len(threads) == 1 else ""
        if disposed:
            return at + "engine.dispose()%s closed %s" % (on, what)
        if by_pool * 2 > len(lives):
            return at + "the pool%s closed %s" % (on, what)
        return at + "close()%s closed %s" % (on, what)
    if cause == ev.REFCOUNT:
        return at + what + " were destroyed when their last reference went away (refcount)"
    if cause == ev.SHUTDOWN:
        return at + "interpreter shutdown destroyed " + what
    if cause == ev.NEVER_CLOSED:
        status = "" if exit_status is None else " (exit status %s)" % exit_status
        return (at + "the process ended%s with %s still open: no COM_QUIT was sent, "
                "the server counts them as aborted clients" % (status, what))
    if cause == ev.SERVER:
        return at + "the server ended " + what + " before the client closed them"
    if cause == ev.GC:
        gen = " (%s)" % collection_name(generation, collector) if generation is not None else ""
        return at + "the cyclic garbage collector%s destroyed %s" % (gen, what)
    return at + what + " ended for a reason the layers could not agree on (unknown)"


def pattern_text(gen: Optional[int], collector: str, collections: int, each: int, lo: int, hi: int, total: int,
                 every: float, intervals: Sequence[float], regular: bool, drops: int) -> str:
    """A pattern of collections (drops.find_patterns): 'a generation-1 collection every ~6.5 s
    destroys ~33 connections (…)', or at irregular intervals."""
    name = collection_name(gen, collector)
    spread = ("%s each" % fmt_int(lo)) if lo == hi else ("%s–%s each" % (fmt_int(lo), fmt_int(hi)))
    detail = "%d collections, %s, %s in all" % (collections, spread, fmt_int(total))
    if regular:
        text = "%s every ~%s s destroys ~%s (%s)" % (
            a_collection(gen, collector), fmt_approx(every), plural(each, "connection"), detail)
        if drops * 2 > collections:
            text += ": the saw-tooth of the connection count"
    else:
        text = "%ss destroyed ~%s at irregular intervals of %s–%s s (%s)" % (
            name, plural(each, "connection"), fmt_s(min(intervals)), fmt_s(max(intervals)), detail)
    return text
