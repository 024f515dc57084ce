"""build_report(capture) -> Report: join, attribute, timeline, drops, engines, findings.

The order of the pipeline is docs/architecture.md's: load → join → attribute → timeline →
drops → findings. Nothing here formats output; renderers receive the Report.
"""

import gc
from collections import Counter
from typing import Any, Dict, List, Optional

from trace_quit.tracer import events as ev

from . import aborted as abortedlib
from . import bound as boundlib
from . import drops as dropslib
from . import engines as engineslib
from . import findings as findingslib
from . import gcwhy, tests_view
from .attribute import Context, Totals, attribute_all, claims_summary, kernel_drivers
from .capture import Capture, describe_lacks
from .join import Collection, Joined, join
from .model import (
    ComQuit, CollectionSummary, Connections, Gc, Layers, Program, Quit, Report, Timeline,
)
from .sites import relative_site
from .timeline import LiveCurve, envelope, quit_histogram, quit_key
from .words import aborted as words_aborted
from .words import causes as words_causes
from .words import summary as words_summary

#: The syscalls whose tracepoints see the bytes mysql_close sends (tracer/bpf/session.py).
_SEND_TRACEPOINTS = ("syscalls:sys_enter_write", "syscalls:sys_enter_sendto", "syscalls:sys_enter_writev",
                     "syscalls:sys_enter_sendmsg")



def _gen_dict(counter: Counter) -> Dict[str, int]:
    out = {"0": counter.get(0, 0), "1": counter.get(1, 0), "2": counter.get(2, 0)}
    for g, n in sorted(counter.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0)):
        if g in (0, 1, 2):
            continue
        out["unknown" if g is None else str(g)] = n
    return out


def _layers(header: Dict[str, Any], j: Joined) -> Layers:
    declared = header.get("layers") if isinstance(header.get("layers"), dict) else {}
    # The agent and the sampler from what arrived, not from what was asked for: an agent that
    # never loaded (python -I) or a sampler that never got a sample is not a layer that ran.
    agent = j.sources.get(ev.SRC_AGENT, 0) > 0
    bpf = bool(declared.get("bpf")) or j.sources.get(ev.SRC_BPF, 0) > 0
    sampler = bool(j.server_counts)
    return Layers(bpf=bpf, agent=agent, sampler=sampler, wire=bpf and _wire_attached(declared, j))


def _declared(header: Dict[str, Any], layer: str) -> bool:
    declared = header.get("layers") if isinstance(header.get("layers"), dict) else {}
    return bool(declared.get(layer))


def attached(header: Dict[str, Any]) -> bool:
    """Was the capture taken with --pid (the header names the process attached to)?"""
    return type(header.get("attached_pid")) is int


def _wire_attached(declared: Dict[str, Any], j: Joined) -> bool:
    """Were the kernel's send probes attached? Only then does silence mean "not sent"."""
    if j.probes is not None:
        attached = j.probes.probes
        if isinstance(attached, list):
            return any(isinstance(p, dict) and isinstance(p.get("symbol"), str)
                       and p["symbol"].startswith(_SEND_TRACEPOINTS) for p in attached)
    if "wire" in declared:
        return bool(declared["wire"])
    # No description of the probes: only a send actually seen proves them.
    return j.kinds.get(ev.BPF_WIRE, 0) > 0


def _lost(trailer: Optional[Dict[str, Any]], j: Joined) -> Dict[str, int]:
    lost = {ev.SRC_AGENT: j.agent_lost, ev.SRC_BPF: j.bpf_dropped}
    declared = trailer.get("lost") if trailer else None  # an object (tracer/events.py), per source
    for src, n in (declared or {}).items():
        if type(n) is int:
            lost[src] = max(lost.get(src, 0), n)
    return {s: n for s, n in lost.items() if n}


class _Collections:
    """The capture's collections seen three ways: counted, drawn, and the ones that closed connections."""

    def __init__(self, j: Joined, destroyed: Dict[Collection, List[Any]]):
        self.by = destroyed  # collection -> the Ends it destroyed (attribute.Attribution.destroyed)
        agent = [c for c in j.collections if c.src == ev.SRC_AGENT]
        bpf = [c for c in j.collections if c.src == ev.SRC_BPF]
        # Every collection that destroyed a connection, once (attribution reports the agent's
        # record of a collection both layers saw).
        self.closing = [c for c in j.collections if c in destroyed]
        # Counts: the agent's cumulative gc_counts per process (it writes young collections
        # out only when they destroyed something), else the kernel's records, else the agent's.
        counts: Counter = Counter()
        bpf_pids = {c.pid for c in bpf}
        pids = set(j.gc_counts) | bpf_pids | {c.pid for c in agent}
        for pid in pids:
            if pid in j.gc_counts:
                for g, n in j.gc_counts[pid].items():
                    counts[int(g) if g.isdigit() else None] += n
            else:
                src = bpf if pid in bpf_pids else agent
                counts.update(c.gen for c in src if c.pid == pid)
        self.counts = counts
        # Drawn: every collection the kernel saw (complete, young ones too), plus any the agent
        # alone saw; without the kernel, the agent's records.
        if bpf:
            self.drawn = bpf + [c for c in agent if c.twin is None]
        else:
            self.drawn = agent
        self.drawn.sort(key=lambda c: c.t_start)

    def destroyed(self, c: Collection) -> int:
        """Connections a collection destroyed, whichever layer's record holds them."""
        return len(self.by.get(c, ())) + (len(self.by.get(c.twin, ())) if c.twin is not None else 0)


def context(header: Dict[str, Any], j: Joined, layers: Any, finished: bool, end_all: Optional[int]) -> Context:
    """What the decisions need to know of the run (attribute.Context): the one construction the
    report and the live exporter (tracer/metrics.py) share, so a replay decides as the run did.
    ``finished``: the capture ended (a process with no end of its own ended then, at ``end_all``)."""
    # --pid: the service goes on after detach, so the end of the capture is no process's end;
    # its connections still open then are "open at detach", not never closed (only a process
    # seen to exit ends them).
    attached_alive = attached(header) and j.child_exit is None

    def process_ended(pid: int) -> Optional[int]:
        t = j.exits.get(pid)
        if t is not None:
            return t
        if finished and not attached_alive:
            return end_all
        return None

    return Context(agent=layers.agent, bpf=layers.bpf, wire=layers.wire, process_ended=process_ended,
                   kernel_drivers=kernel_drivers(j.probes, _declared(header, "bpf")), attached=attached(header))


def _context(header: Dict[str, Any], trailer: Optional[Dict[str, Any]], j: Joined, layers: Any):
    """What the decisions need to know of the run (attribute.Context), and the capture's bound."""
    # When did each process end? Known from bpf_exit, child_exit, or a finished capture.
    finished = trailer is not None or j.child_exit is not None
    end_all = j.child_exit[0] if j.child_exit else (trailer["t"] if trailer else j.t_last)

    # --max-capture: past the bound the detail stops, so a connection with no end in it may have
    # ended among the counted ones: never_closed only from a process end that is in the detail.
    bound = boundlib.read(trailer, layers.bpf, Context(agent=layers.agent, bpf=layers.bpf, wire=layers.wire,
                                                       process_ended=lambda pid: None))

    ctx = context(header, j, layers, finished=finished and bound is None, end_all=end_all)
    return ctx, bound


def build_report(capture: Capture) -> Report:
    """Explain one capture."""
    # The join and the attribution build objects that live as long as the report (lives, their
    # verdicts): the cyclic collector would only walk them again and again while they pile up,
    # as analysis/capture.py's reading (tests/bench/report_1m.py).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _build_report(capture)
    finally:
        if collecting:
            gc.enable()


def _build_report(capture: Capture) -> Report:
    header = capture.header if isinstance(capture.header, dict) else {}
    trailer = capture.trailer
    j = join(capture.events, header)
    cwd = header.get("cwd") if isinstance(header.get("cwd"), str) else None

    t0 = j.t0
    if t0 is None:
        ht = header.get("t")
        t0 = ht if type(ht) is int else (j.t_first or 0)

    def to_s(t: int) -> float:
        return round((t - t0) / 1e9, 3)

    layers = _layers(header, j)

    ctx, bound = _context(header, trailer, j, layers)
    if bound is not None:
        j.lives = boundlib.hold_back_late_agent_records(j.lives, capture.events, bound)
    # Every cause is decided in attribute.py, the one place: verdicts, failed connects, fork copies.
    att = attribute_all(j.lives, ctx)
    ended, copies, counted, failed = att.ended, att.copies, att.counted, att.failed
    opened, before_capture, open_at_end = att.opened, att.opened_before_capture, att.open_at_end
    families, shared = att.families, att.shared

    # --- counts ---------------------------------------------------------------------------
    totals = att.totals  # attribute.count(): the one count every view shows
    if bound is not None:
        boundlib.add_to_totals(bound, totals)
        bound["t_s"] = to_s(bound["reached_t"]) if type(bound["reached_t"]) is int else None
        bound["open_at_bound"] = att.open_at_end
        opened += bound["opened_after"]
    by_cause, gc_gen, wire = totals.by_cause, totals.gc_by_generation, totals.wire
    curve = LiveCurve(counted)
    max_live, max_t = curve.maximum()
    client_ends = sum(by_cause[c] for c in words_causes.CLIENT_CLOSES)
    without = sum(1 for lf in ended if lf.cause in words_causes.CLIENT_CLOSES and abortedlib.sent_no_quit(lf))
    connections = Connections(
        ended=client_ends, with_com_quit=client_ends - without, without_com_quit=without,
        opened=opened, com_quit=client_ends, never_closed=by_cause[ev.NEVER_CLOSED],
        max_live=max_live, max_live_t_s=to_s(max_t) if max_t is not None else None, failed=failed,
        server=by_cause[ev.SERVER], open_at_end=open_at_end, opened_before_capture=before_capture,
        forked=len(families), fork_copies=len(copies))
    com_quit = ComQuit(by_cause={c: by_cause.get(c, 0) for c in ev.CAUSES},
                       gc_by_generation=_gen_dict(gc_gen),
                       wire={w: wire.get(w, 0) for w in ev.WIRE_STATES})

    # --- collections ----------------------------------------------------------------------
    origins = dropslib.Origins(cwd, j.thread_names)
    colls = _Collections(j, att.destroyed)
    closing = []
    for c in sorted(colls.closing, key=lambda c: c.t_start):
        closing.append(CollectionSummary(
            t_s=to_s(c.t_start), generation=c.gen, collected=c.collected, connections=len(att.destroyed[c]),
            thread=c.thread or (("tid %d" % c.tid) if c.tid is not None else None),
            triggered_at=relative_site(c.site, cwd), pid=c.pid, cid=c.cid,
            duration_ms=round((c.t_stop - c.t_start) / 1e6, 3) if c.t_stop is not None else None,
            engines=len({id(lf.engine) for lf in att.destroyed[c] if lf.engine is not None}),
            call_sites=origins.call_sites(att.destroyed[c])[:3]))
    gc = Gc(collections=sum(colls.counts.values()), by_generation=_gen_dict(colls.counts),
            that_closed_connections=closing)

    # --- program --------------------------------------------------------------------------
    exit_status = None
    if trailer is not None and trailer.get("exit_status") is not None:
        exit_status = trailer["exit_status"]
    elif j.child_exit is not None and j.child_exit[1] is not None:
        exit_status = j.child_exit[1]
    t_stop = j.child_exit[0] if j.child_exit else j.t_last
    duration_s = to_s(t_stop) if t_stop is not None else None
    argv = header.get("argv")
    argv = [str(a) for a in argv] if isinstance(argv, list) else []
    python = next((v for v in j.pids.values() if v), None)
    program = Program(argv=argv, exit_status=exit_status, duration_s=duration_s,
                      pid=j.root_pid or (header.get("child_pid") if isinstance(header.get("child_pid"), int) else None),
                      python=python, modules=dict(j.modules), gc_disabled=bool(j.gc_disabled),
                      attached=attached(header))

    # --- drops, patterns, engines, findings -------------------------------------------------
    drop_collections: set = set()
    # The thresholds in effect, the program's collector (named in its own terms: an incremental
    # collector's increments are no generation 2), and why each collection behind a drop ran then.
    thresholds = gcwhy.Thresholds(capture.events, header)
    collector = thresholds.collector(program.pid)
    drops = dropslib.find_drops(ended, curve, to_s, origins, exit_status, drop_collections, collector)
    for d in drops:
        if d.cause == ev.GC:
            d.why_now = thresholds.why_now(d.pid, d.cid, d.generation)
    patterns = dropslib.find_patterns(colls.closing, att.destroyed, drop_collections, collector)
    engines = engineslib.summarise(j.engines, counted, cwd, to_s)
    lost = _lost(trailer, j)
    notes = [{"t_s": to_s(t), "level": level, "text": text} for t, level, text in j.notes]
    capture_status = ("damaged" if capture.damaged_at_line is not None
                      else "truncated" if capture.trailer is None else "complete")
    findings = findingslib.find(findingslib.Facts(
        connections=connections, com_quit=com_quit, gc=gc, drops=drops, patterns=patterns, engines=engines,
        layers=layers, ended=ended, origins=origins, capture_status=capture_status,
        capture_detail=capture.status, lost=lost, exit_status=exit_status, notes=notes,
        malformed=sum(capture.invalid.values()), shared=shared, lacks=describe_lacks(capture),
        unflushed=_unflushed(j)))

    # --- per-COM_QUIT records and the timeline ---------------------------------------------
    quits = []
    site_cache: Dict[int, Optional[str]] = {}
    for lf in sorted(ended + copies, key=lambda x: x.t_end):
        site = None
        if lf.engine is not None:
            key = id(lf.engine)
            if key not in site_cache:
                site_cache[key] = origins.engine_site(lf)
            site = site_cache[key]
        a = lf.agent_end
        stack = a.stack if a is not None and a.k == ev.CONN_CLOSE and lf.cause == ev.EXPLICIT_CLOSE else None
        thread = origins.end_thread(lf)
        if thread is None and lf.collection is not None:
            thread = lf.collection.thread
        quits.append(Quit(
            t_s=to_s(lf.t_end), pid=lf.pid, tid=lf.end_tid, conn=lf.conn, cause=lf.cause,
            generation=lf.generation, collection=lf.collection.cid if lf.collection is not None else None,
            wire=lf.wire_state, thread=thread, engine_site=site,
            opened_t_s=to_s(lf.t_open) if lf.t_open is not None else None,
            stack=stack if isinstance(stack, list) else None, reason=lf.reason,
            closed_by=lf.pool_end and ("pool " + lf.pool_end), evidence=lf.server_evidence,
            counted=lf.copy_of is None,
            inherited_from=lf.inherited_from.pid if lf.inherited_from is not None else None,
            counted_pid=lf.copy_of.pid if lf.copy_of is not None else None,
            origin=dropslib.ORIGIN_BEFORE_ATTACH if origins.open_site(lf) == dropslib.ORIGIN_BEFORE_ATTACH else None))
    end_s = max(duration_s or 0.0, quits[-1].t_s if quits else 0.0)
    bin_s, bins = quit_histogram([(q.t_s, quit_key(q.cause, q.generation)) for q in quits if q.counted], end_s)
    timeline = Timeline(
        live=envelope(curve.times, curve.values, t0, curve.initial),
        server=[[to_s(t), n] for t, n in j.server_counts],
        server_own_user=j.server_own_user,
        collections={"t_s": [to_s(c.t_start) for c in colls.drawn],
                     "generation": [c.gen for c in colls.drawn],
                     "destroyed": [colls.destroyed(c) for c in colls.drawn]},
        quit_bin_s=bin_s, quit_bins=bins, end_s=end_s)
    if len(timeline.server) > 4 * len(timeline.live) and len(timeline.server) > 8000:
        step = len(timeline.server) // 8000 + 1
        timeline.server = timeline.server[::step]

    # Aborted clients and drivers (issue 19): a drop of connections that sent no COM_QUIT says so.
    no_quit = abortedlib.summarise(ended, j)
    words_aborted.explain_drops(drops, no_quit, com_quit)
    extra = abortedlib.finding(no_quit)
    if extra is not None:
        # First among the warnings, after any error: an engine per call that leaks is the
        # headline, the aborted clients it causes are its consequence (test_fastapi_async_engine.py).
        at = next((i for i, f in enumerate(findings) if f.severity != "error"), len(findings))
        findings.insert(at, extra)
    if bound is not None:
        bound["text"] = words_summary.bound_line(bound)
    agent_only = claims_summary(att.claims)
    if agent_only["total"]:  # after the counts: they are what the totals leave out
        agent_only["text"] = words_summary.agent_only_line(agent_only)
    summary = words_summary.summary(connections, com_quit, gc, drops, patterns, engines, layers, program,
                                    findings, timeline.server, collector=collector, no_quit=no_quit,
                                    bound_text=bound["text"] if bound is not None else None,
                                    agent_only_text=agent_only.get("text"))
    return Report(
        path=capture.path, capture_status=capture_status, capture_detail=capture.status, program=program,
        layers=layers, connections=connections, com_quit=com_quit, gc=gc, drops=drops, patterns=patterns,
        engines=engines, findings=findings, lost_events=sum(lost.values()), lost_by_source=lost,
        summary=summary, quits=quits, timeline=timeline, notes=notes, events=len(capture.events),
        malformed=sum(capture.invalid.values()), revision=capture.header.get("version") or 0,
        lacks=dict(capture.lacks), no_quit=no_quit, gc_thresholds=thresholds.summary(program.pid),
        processes=by_process(totals, j), bound=bound, agent_only=agent_only,
        tests=tests_view.by_test(capture.events, ended),
        gc_collector={"collector": collector, "caveats": thresholds.caveats(program.pid)})


def by_process(totals: Totals, j: Joined) -> List[Dict[str, Any]]:
    """Connection ends per traced process (a service's master and workers, a forked child):
    each counted end once, under the pid whose end counts; the parent pid when it forked."""
    rows = []
    for pid in sorted(totals.by_process):
        counts = totals.by_process[pid]
        rows.append({"pid": pid, "python": j.pids.get(pid), "parent": j.forked_from.get(pid),
                     "connections": sum(counts.values()),
                     "by_cause": {cause if cause != ev.GC or gen is None else "gc gen %d" % gen: n
                                  for (cause, gen), n in counts.items()}})
    return rows


def _unflushed(j) -> List[int]:
    """Processes with the agent that ended (the kernel saw it) without its exit flush: killed,
    their queued records lost uncounted. Only said when this capture's agent writes that flush
    at all (an older agent never does)."""
    if not j.agent_final:
        return []
    return sorted(pid for pid in j.pids if pid in j.exits and pid not in j.agent_final)
