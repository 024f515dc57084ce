"""The report as JSON: the contract "trace-quit/report/1", its JSON Schema in docs/report.schema.json.

Contract keys are never removed or renamed; everything else is an addition (keys may be
added). Several captures give ``{"schema": "trace-quit/reports/1", "reports": [...]}``.
"""

import dataclasses
import json
from typing import Any, Dict, Sequence

from .model import Report, SCHEMA

MULTI_SCHEMA = "trace-quit/reports/1"


def to_dict(r: Report) -> Dict[str, Any]:
    """One report as the contract's JSON object (``bound`` only when the capture reached it)."""
    p, L, c, q, g = r.program, r.layers, r.connections, r.com_quit, r.gc
    doc = {
        "schema": SCHEMA,
        "program": {"argv": p.argv, "exit_status": p.exit_status, "duration_s": p.duration_s,
                    "pid": p.pid, "python": p.python, "modules": p.modules, "attached": p.attached,
                    "gc_disabled": p.gc_disabled},
        "layers": {"bpf": L.bpf, "agent": L.agent, "sampler": L.sampler, "wire": L.wire},
        "connections": {"opened": c.opened, "com_quit": c.com_quit, "never_closed": c.never_closed,
                        "max_live": c.max_live, "max_live_t_s": c.max_live_t_s, "failed": c.failed,
                        "server": c.server, "open_at_end": c.open_at_end,
                        "opened_before_capture": c.opened_before_capture, "forked": c.forked,
                        "fork_copies": c.fork_copies, "ended": c.ended, "with_com_quit": c.with_com_quit,
                        "without_com_quit": c.without_com_quit},
        "com_quit": {"by_cause": dict(q.by_cause), "gc_by_generation": dict(q.gc_by_generation),
                     "wire": dict(q.wire)},
        "gc": {"collections": g.collections, "by_generation": dict(g.by_generation),
               "that_closed_connections": [
                   {"t_s": s.t_s, "generation": s.generation, "collected": s.collected,
                    "connections": s.connections, "thread": s.thread, "triggered_at": s.triggered_at,
                    "pid": s.pid, "cid": s.cid, "duration_ms": s.duration_ms, "engines": s.engines,
                    "call_sites": s.call_sites}
                   for s in g.that_closed_connections]},
        "drops": [{"t_s": d.t_s, "from": d.from_, "to": d.to, "duration_ms": d.duration_ms, "cause": d.cause,
                   "generation": d.generation, "explanation": d.explanation, "connections": d.connections,
                   "thread": d.thread, "triggered_at": d.triggered_at, "collected": d.collected,
                   "call_sites": d.call_sites, "at_exit": d.at_exit, "why_now": d.why_now}
                  for d in r.drops],
        "patterns": [{"cause": pt.cause, "generation": pt.generation, "collections": pt.collections,
                      "every_s": pt.every_s, "connections_each": pt.connections_each, "min_each": pt.min_each,
                      "max_each": pt.max_each, "total": pt.total, "regular": pt.regular, "drops": pt.drops,
                      "text": pt.text}
                     for pt in r.patterns],
        "engines": [{"call_site": s.call_site, "created": s.created, "disposed": s.disposed,
                     "connections": s.connections, "destroyed": s.destroyed, "pool_class": s.pool_class,
                     "pool_size": s.pool_size, "max_overflow": s.max_overflow,
                     "max_live_engines": s.max_live_engines, "max_live_connections": s.max_live_connections,
                     "engines_at_max": s.engines_at_max, "connections_by_cause": s.connections_by_cause,
                     "gc_by_generation": s.gc_by_generation, "urls": s.urls, "chain": s.chain}
                    for s in r.engines],
        "findings": [{"severity": f.severity, "title": f.title, "evidence": f.evidence, "fix": f.fix,
                      "call_site": f.call_site, "count": f.count}
                     for f in r.findings],
        "lost_events": r.lost_events,
        # --- additions ---
        "lost_by_source": r.lost_by_source,
        "capture": {"path": r.path, "status": r.capture_status, "detail": r.capture_detail, "events": r.events,
                    "malformed": r.malformed, "revision": r.revision, "lacks": r.lacks},
        "capture_status": r.capture_status,
        "summary": r.summary,
        "notes": r.notes,
        "timeline": {"live": r.timeline.live, "server": r.timeline.server,
                     "collections": r.timeline.collections, "quit_bin_s": r.timeline.quit_bin_s,
                     "quit_bins": r.timeline.quit_bins, "end_s": r.timeline.end_s,
                     # only when the count covers one user's own connections (no PROCESS)
                     **({"server_own_user": r.timeline.server_own_user} if r.timeline.server_own_user else {})},
        "quits": [_quit(x) for x in r.quits],
        # issue 19: connections closed without COM_QUIT (aborted clients), per driver
        "no_quit": dataclasses.asdict(r.no_quit) if r.no_quit is not None else None,
        "gc_thresholds": r.gc_thresholds,  # platform (issue 14)
        "gc_collector": r.gc_collector,
        "processes": r.processes,  # per traced process (a service's workers: --pid of a master)
        # What only the agent's channel said, with the kernel layer on: not in any count above.
        "agent_only": r.agent_only or {"total": 0, "by_cause": {}, "pids": [], "pids_total": 0},
    }
    if r.tests:  # a capture of the pytest plugin: per test (analysis/tests_view.py); absent otherwise
        doc["tests"] = r.tests
    if r.bound is not None:  # --max-capture reached (analysis/bound.py); absent otherwise
        doc["bound"] = dict(r.bound)
    return doc


def _quit(x) -> Dict[str, Any]:
    doc = {"t_s": x.t_s, "pid": x.pid, "tid": x.tid, "conn": "0x%x" % x.conn if isinstance(x.conn, int) else x.conn,
           "cause": x.cause, "generation": x.generation, "collection": x.collection, "wire": x.wire,
           "thread": x.thread, "engine_site": x.engine_site, "opened_t_s": x.opened_t_s, "stack": x.stack,
           "reason": x.reason, "closed_by": x.closed_by, "evidence": x.evidence, "counted": x.counted,
           "inherited_from": x.inherited_from, "counted_pid": x.counted_pid}
    if x.origin is not None:  # "before attach" (--pid); absent otherwise
        doc["origin"] = x.origin
    return doc


def render(reports: Sequence[Report]) -> str:
    """JSON text: one report's object, or several under ``reports``."""
    if len(reports) == 1:
        doc: Any = to_dict(reports[0])
    else:
        doc = {"schema": MULTI_SCHEMA, "reports": [to_dict(r) for r in reports]}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False, default=str) + "\n"
