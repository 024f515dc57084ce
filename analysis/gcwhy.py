"""Why a garbage collection ran when it did: the generation counters against the thresholds.

CPython's generational collector (3.8-3.13, 3.14.5 on and 3.15) keeps one counter per
generation: generation 0 counts container allocations minus deallocations since its last
collection, generation N>0 counts collections of generation N-1 since its own last one. When
generation 0's counter passes its threshold, the interpreter collects the *oldest* generation
whose counter is over its threshold -- except that a full (generation-2) collection also
needs the objects that survived into generation 2 since the last full collection to exceed a
quarter of generation 2 (``long_lived_pending > long_lived_total / 4``). Python exposes the
counters (``gc.get_count()``) and the thresholds (``gc.get_threshold()``) but not those two
long-lived totals, so the quarter rule is never claimed from evidence here, only inferred.

The agent reads the counters in its "start" callback (``gc_start.counts``, before the
collection resets them) and the thresholds then in effect (``gc_start.thresholds``: a program
may call ``gc.set_threshold()`` after start-up, as the engine-per-call workload does on Python 3.13);
``agent_start.gc_thresholds`` are the interpreter's at start-up.

Other collectors are said, not guessed: 3.14.0-3.14.4's incremental collector (automatic
collections are young or incremental, reported as generation 0 or 1; a full one only comes
from ``gc.collect()``), and free-threaded builds (one generation: the number is no age).
"""

import re
from typing import Any, Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev
from trace_quit.tracer.bpf import compat
from trace_quit.tracer.records import typed

from .words.collector import a_collection, fmt_thresholds

GENERATIONAL, INCREMENTAL = compat.GENERATIONAL, compat.INCREMENTAL
FREE_THREADED, UNKNOWN = compat.FREE_THREADED, compat.UNKNOWN

#: CPython 3.8-3.12's thresholds (the incident's 3.10 ran with them); 3.13 raised generation
#: 0's to 2000.
CLASSIC_THRESHOLDS = (700, 10, 10)

QUARTER_RULE = ("a full collection also needs the objects that survived into generation 2 since "
                "the last full one to exceed a quarter of generation 2 (long_lived_pending > "
                "long_lived_total / 4), which Python does not expose: it held, or generation 2 "
                "would not have been collected")


def collector(python: Optional[str], free_threaded: bool = False, thresholds: Optional[Sequence[int]] = None,
              generations: Optional[int] = None) -> str:
    """Which collector a CPython runs: generational, incremental, free-threaded, unknown -- decided
    as the kernel layer decides it (tracer/bpf/compat.collector), from its version and what it
    reported at start (thresholds, number of generations)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", python or "")
    version = tuple(int(g) for g in m.groups() if g is not None) if m else None
    return compat.collector(version, free_threaded, thresholds, generations)[0]


def _triple(value: Any) -> Optional[List[int]]:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(type(v) is int for v in value):
        return list(value)
    return None


class Thresholds:
    """Per process: the thresholds at start-up and at each recorded collection."""

    def __init__(self, events: Sequence[Dict[str, Any]], header: Optional[Dict[str, Any]] = None):
        self.at_start: Dict[int, List[int]] = {}
        self.python: Dict[int, str] = {}
        self.free_threaded: Dict[int, bool] = {}
        self.generations: Dict[int, int] = {}             # len(gc.get_stats()) at start, per pid
        self.starts: Dict[tuple, Dict[str, Any]] = {}     # (pid, cid) -> agent gc_start
        self.in_effect: Dict[int, List[int]] = {}         # the last recorded, per pid
        # What the kernel layer found the interpreter to be (tracer/bpf/compat.py): a free-threaded
        # build is not visible in the agent's version string.
        self.kernel_collector: Optional[str] = None
        self.kernel_caveats: List[str] = []   # compat.collector's sentences ("kernel layer: ...")
        events = [typed(e) for e in events]
        targets_seen = [(header or {}).get("targets")] + [e.targets for e in events if e.k == ev.BPF_PROBES]
        for targets in targets_seen:
            if isinstance(targets, dict) and isinstance(targets.get("gc_collector"), str):
                self.kernel_collector = targets["gc_collector"]
                notes = targets.get("notes") if isinstance(targets.get("notes"), list) else []
                self.kernel_caveats = [n for n in notes if isinstance(n, str) and n.startswith("kernel layer: ")]
        for e in events:
            if e.src != ev.SRC_AGENT:
                continue
            k, pid = e.k, e.pid
            if type(pid) is not int:
                continue
            if k == ev.AGENT_START:
                t = _triple(e.gc_thresholds)
                if t is not None:
                    self.at_start.setdefault(pid, t)
                    self.in_effect.setdefault(pid, t)
                if isinstance(e.python, str):
                    self.python.setdefault(pid, e.python)
                if type(e.gc_generations) is int:
                    self.generations.setdefault(pid, e.gc_generations)
                self.free_threaded[pid] = self.kernel_collector == FREE_THREADED
            elif k == ev.GC_START and type(e.cid) is int:
                self.starts[(pid, e.cid)] = e
                t = _triple(e.thresholds)
                if t is not None:
                    self.in_effect[pid] = t

    def collector(self, pid: Optional[int]) -> str:
        """Process ``pid``'s collector from what its interpreter reported at start (agent_start);
        another traced process's when ``pid`` has no agent_start, else the kernel layer's."""
        if pid not in self.python and self.python:
            pid = next(iter(self.python))
        if pid not in self.python:
            return self.kernel_collector or UNKNOWN
        return collector(self.python[pid], self.free_threaded.get(pid, False), self.at_start.get(pid),
                         self.generations.get(pid))

    def caveats(self, pid: Optional[int]) -> List[str]:
        """What each layer could not say because of process ``pid``'s collector, naming the layer."""
        out = list(self.kernel_caveats)
        if pid not in self.python and self.python:
            pid = next(iter(self.python))
        if pid not in self.python:
            return out
        kind, python = self.collector(pid), self.python[pid]
        if kind == INCREMENTAL:
            out.append("agent layer: CPython %s collects incrementally: what it reports as generation 0 is a young "
                       "collection, 1 a young collection plus an increment of the old generation, 2 a full "
                       "collection (gc.collect()); no collection is a generation 2 of the generational collector, "
                       "and its threshold rule does not explain when they ran" % python)
        elif kind == FREE_THREADED:
            out.append("agent layer: free-threaded CPython %s has one generation: the number a collection reports "
                       "is no age" % python)
        elif kind == UNKNOWN:
            out.append("agent layer: CPython %s did not report the generational collector at start (thresholds %s, "
                       "%s generations): its collections' numbers are shown as reported, no rule applied" % (
                           python, self.at_start.get(pid), self.generations.get(pid, "?")))
        return out

    def summary(self, pid: Optional[int]) -> Optional[Dict[str, Any]]:
        """The report's ``gc_thresholds`` for process ``pid`` (the program), or None without the agent."""
        if pid not in self.at_start and self.at_start:
            pid = next(iter(self.at_start))
        if pid not in self.at_start:
            return None
        start, now = self.at_start[pid], self.in_effect.get(pid, self.at_start[pid])
        python = self.python.get(pid)
        return {"pid": pid, "python": python, "collector": self.collector(pid),
                "at_start": start, "in_effect": now, "changed_at_run_time": now != start,
                "before_3_13": list(CLASSIC_THRESHOLDS)}

    def why_now(self, pid: Optional[int], cid: Optional[int], generation: Optional[int]) -> Dict[str, Any]:
        """Why collection ``cid`` of ``pid`` ran then: the counters it started with against the thresholds."""
        start = self.starts.get((pid, cid)) if pid is not None and cid is not None else None
        python = self.python.get(pid) if pid is not None else None
        kind = self.collector(pid)
        thresholds = (_triple(start.thresholds) if start else None) or self.in_effect.get(pid)
        counts = _triple(start.counts) if start else None
        return explain(generation, counts, thresholds, kind, python)


def _deferred(python: Optional[str]) -> bool:
    """3.12+ run an automatic collection at the next evaluation-loop check, not in the allocation
    that passed generation 0's threshold (CPython's _Py_ScheduleGC/_Py_RunGC): by then other
    deallocations may have brought generation 0's counter back under it, and only the collected
    generation's own counter was checked when it was chosen."""
    m = re.match(r"(\d+)\.(\d+)", python or "")
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (3, 12)


def explain(generation: Optional[int], counts: Optional[List[int]], thresholds: Optional[List[int]],
            kind: str = GENERATIONAL, python: Optional[str] = None) -> Dict[str, Any]:
    """``why_now``: {generation, collector, counts, thresholds, trigger, text}.

    ``trigger``: "thresholds" (the counters say the interpreter chose it), "explicit" (no
    counter over its threshold: gc.collect() or the interpreter's own call), or "unknown"
    (counters or thresholds not recorded, or a collector whose rule this does not apply).
    ``python`` (the traced CPython's version) says whether the collection ran deferred."""
    out: Dict[str, Any] = {"generation": generation, "collector": kind, "counts": counts,
                           "thresholds": thresholds, "trigger": "unknown", "text": ""}
    if kind == FREE_THREADED:
        out["text"] = ("a free-threaded build has a single generation: the collection ran when the count of "
                       "new objects passed the threshold%s; its number says nothing about the objects' age"
                       % (" (%d)" % thresholds[0] if thresholds else ""))
        return out
    if kind == INCREMENTAL:
        out["text"] = ("%s: CPython 3.14.0-3.14.4 collect incrementally (an automatic collection is a young "
                       "collection plus an increment of the old generation; a full collection only comes from "
                       "gc.collect()), so the generational threshold rule does not apply"
                       % a_collection(generation, INCREMENTAL))
        return out
    if kind == UNKNOWN:
        out["text"] = "a CPython whose collector trace-quit does not know: no rule applied"
        return out
    if generation is None:
        out["text"] = "the collection's generation is not known (the kernel side could not read it)"
        return out
    if counts is None or thresholds is None:
        out["text"] = ("generation %d; the counters at its start were not recorded (an agent without "
                       "gc_start counts)%s" % (generation, "" if thresholds is None else
                                               ", thresholds %s" % fmt_thresholds(thresholds)))
        return out
    over = [g for g in range(3) if counts[g] > thresholds[g]]
    parts = ["%s %d %s %d" % (_counter_name(g), counts[g], ">" if counts[g] > thresholds[g] else "≤",
                              thresholds[g]) for g in range(generation, -1, -1) if g < 3]
    older = [g for g in range(generation + 1, 3) if counts[g] > thresholds[g]]
    # On 3.12+ a generation-1/2 collection whose own counter is over was chosen by the thresholds
    # even when generation 0's counter fell back meanwhile (tests/unit/test_gcwhy.py pins it; the
    # Debian 13 demo (tests/system/test_demo.py) once read its generation-2 drop as explicit).
    scheduled = generation > 0 and counts[0] <= thresholds[0] and _deferred(python)
    if (counts[0] > thresholds[0] or scheduled) and generation in over:
        out["trigger"] = "thresholds"
        why = ("generation 0's counter passed its threshold and generation %d was the oldest one over its "
               "own" % generation)
        if scheduled:
            why = ("generation 0's counter passed its threshold, which scheduled a collection that Python "
                   "%s runs at its next evaluation-loop check (deallocations meanwhile brought the counter "
                   "back to %d), and generation %d was the oldest one over its own"
                   % (python, counts[0], generation))
        if older:
            why += ("; generation %s was over too, but a full collection was not due (the quarter rule)"
                    % "/".join(map(str, older)))
        text = "%s: %s" % (why, ", ".join(parts))
        if generation == 2:
            text += "; " + QUARTER_RULE
        out["text"] = text
    else:
        out["trigger"] = "explicit"
        out["text"] = ("not due by the thresholds (%s): an explicit gc.collect(%d), or a collection the "
                       "interpreter asked for itself" % (", ".join(parts), generation))
    return out


def _counter_name(g: int) -> str:
    return ("generation 0 (allocations - deallocations)" if g == 0
            else "generation %d (generation-%d collections since its last)" % (g, g - 1))
