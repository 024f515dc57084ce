"""The report as a Chrome / Perfetto trace (the Trace Event Format, JSON).

Open the file in Perfetto's UI (ui.perfetto.dev, "Open trace file") or ``chrome://tracing``.
What it holds, per traced process (``pid``):

* each connection's life as an async slice (``ph`` "b"/"e", category ``connection``) on the
  track of the thread that ended it: async, because one thread's connections overlap without
  nesting (open A, open B, close A), which complete ("X") slices on one track cannot express;
* every collection that destroyed open connections as a complete slice (``ph`` "X",
  category ``gc``) on the collecting thread, with its generation and what it destroyed;
* every connection end as an instant (``ph`` "i", scope thread) named ``COM_QUIT <cause>`` when
  the client sent COM_QUIT, ``end <cause>`` when it did not (never closed, failed, server);
* the live connection count as a counter track (``ph`` "C"), and the server's count when a
  sampler ran.

Times are microseconds since the traced program started (``ts``, as the format asks).
tests/unit/test_render_perfetto.py checks the structure field by field and the counts.
"""

import json
from typing import Dict, List, Sequence

from .model import Report
from .words.causes import CAUSES



def _us(t_s: float) -> int:
    return int(round(t_s * 1e6))


def _label(cause: str, generation) -> str:
    return "gc gen %d" % generation if cause == "gc" and generation is not None else cause


def events(report: Report, pid_offset: int = 0) -> List[Dict]:
    """The trace events of one report (``pid_offset`` keeps several reports apart)."""
    out: List[Dict] = []
    pids = sorted({q.pid for q in report.quits} | {c.pid for c in report.gc.that_closed_connections}
                  | ({report.program.pid} if report.program.pid else set()))
    main_pid = (report.program.pid or (pids[0] if pids else 0)) + pid_offset
    for pid in pids:
        out.append({"ph": "M", "name": "process_name", "pid": pid + pid_offset, "tid": 0,
                    "args": {"name": "%s (pid %d)" % (report.name, pid)}})
    threads = {}
    for q in report.quits:
        if q.thread and q.tid is not None:
            threads[(q.pid, q.tid)] = q.thread
    for (pid, tid), name in sorted(threads.items()):
        out.append({"ph": "M", "name": "thread_name", "pid": pid + pid_offset, "tid": tid,
                    "args": {"name": name}})
    for i, q in enumerate(report.quits):
        if not q.counted:
            continue
        pid = q.pid + pid_offset
        tid = q.tid if q.tid is not None else q.pid
        label = _label(q.cause, q.generation)
        args = {"cause": q.cause, "generation": q.generation, "wire": q.wire,
                "conn": "0x%x" % q.conn if isinstance(q.conn, int) else q.conn,
                "engine_site": q.engine_site, "collection": q.collection}
        if q.opened_t_s is not None and q.t_s is not None:
            common = {"cat": "connection", "name": "connection %s" % args["conn"], "id": "c%d" % i,
                      "pid": pid, "tid": tid}
            out.append(dict(common, ph="b", ts=_us(q.opened_t_s), args={"engine_site": q.engine_site}))
            out.append(dict(common, ph="e", ts=_us(q.t_s), args={"cause": label}))
        if q.t_s is None:
            continue
        sent = CAUSES[q.cause].sends_com_quit and q.wire != "not_sent"
        out.append({"ph": "i", "s": "t", "cat": "com_quit" if sent else "end",
                    "name": ("COM_QUIT " if sent else "end ") + label, "ts": _us(q.t_s),
                    "pid": pid, "tid": tid, "args": args})
    for c in report.gc.that_closed_connections:
        dur = _us((c.duration_ms or 0.0) / 1000.0)
        out.append({"ph": "X", "cat": "gc", "name": "gc gen %s" % c.generation, "ts": _us(c.t_s),
                    "dur": max(dur, 1), "pid": c.pid + pid_offset,
                    "tid": _collector_tid(report, c) or c.pid,
                    "args": {"generation": c.generation, "collected": c.collected,
                             "connections": c.connections, "engines": c.engines,
                             "triggered_at": c.triggered_at}})
    for t_s, live in report.timeline.live:
        out.append({"ph": "C", "name": "live connections", "ts": _us(t_s), "pid": main_pid, "tid": 0,
                    "args": {"live": int(live)}})
    for t_s, count in report.timeline.server:
        out.append({"ph": "C", "name": "server connections", "ts": _us(t_s), "pid": main_pid, "tid": 0,
                    "args": {"processlist": int(count)}})
    return out


def _collector_tid(report: Report, collection) -> int:
    """The thread of the connections a collection destroyed (collections run on one thread)."""
    for q in report.quits:
        if q.collection is not None and q.collection == collection.cid and q.pid == collection.pid:
            return q.tid
    return 0


def render(reports: Sequence[Report]) -> str:
    """One trace file; several reports are kept apart as separate process groups."""
    trace: List[Dict] = []
    for i, report in enumerate(reports):
        trace.extend(events(report, pid_offset=i * 10_000_000))
    doc = {"traceEvents": trace, "displayTimeUnit": "ms",
           "otherData": {"generator": "trace-quit", "captures": [r.path for r in reports]}}
    return json.dumps(doc, separators=(",", ":")) + "\n"
