"""Findings: what is wrong, the evidence from the capture, and the change that fixes it.

Each rule looks at the finished pieces of the report (never at raw events) and speaks about
a call site whenever one is known, because that is the line the user will edit.
"""

import dataclasses
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .drops import Origins
from .engines import pool_bound
from .join import Life
from .model import Connections, ComQuit, Drop, EngineSite, Finding, Gc, Layers, Pattern, SEVERITIES, largest_drop
from .words.numbers import fmt_int, fmt_s, plural

FIX_ENGINE_PER_CALL = (
    "Create the Engine once, at import or start-up, and reuse it from every call and thread "
    "(a module-level `engine = create_engine(...)` and `Session = sessionmaker(bind=engine)`); "
    "if an Engine per call is really wanted, pass `poolclass=NullPool`, or call "
    "`engine.dispose()` when done with it.")


#: The same advice for SQLAlchemy's asyncio engine (aiomysql, asyncmy): an AsyncEngine per
#: request, as an ASGI service writes it, is the incident's pattern over an event loop.
FIX_ASYNC_ENGINE_PER_CALL = (
    "Create the AsyncEngine once, at start-up (a module-level `engine = create_async_engine(...)`, or "
    "in the application's lifespan), and reuse it from every request; `await engine.dispose()` at "
    "shutdown; if an engine per request is really wanted, pass `poolclass=NullPool` or "
    "`await engine.dispose()` when done with it.")

#: URL drivers that only create_async_engine() accepts.
ASYNC_DIALECTS = ("+aiomysql", "+asyncmy")


def engine_api(site: EngineSite) -> str:
    """How the program created the site's Engines: "create_async_engine()" or "create_engine()"."""
    if any(d in (u or "") for u in site.urls for d in ASYNC_DIALECTS):
        return "create_async_engine()"
    return "create_engine()"


def _gen_text(by_gen: Dict[str, int]) -> str:
    parts = ["gen %s: %s" % (g, fmt_int(n)) for g, n in sorted(by_gen.items()) if n]
    return ", ".join(parts)


def _causes_text(by_cause: Dict[str, int], by_gen: Optional[Dict[str, int]] = None) -> str:
    parts = []
    for cause in ev.CAUSES:
        n = by_cause.get(cause, 0)
        if not n:
            continue
        if cause == ev.GC and by_gen and any(by_gen.values()):
            parts.append("%s %s (%s)" % (cause, fmt_int(n), _gen_text(by_gen)))
        else:
            parts.append("%s %s" % (cause, fmt_int(n)))
    return ", ".join(parts) or "none yet"


def _sites_text(lives: Sequence[Life], origins: Origins, limit: int = 3) -> str:
    c = Counter()
    for life in lives:
        c[origins.engine_site(life) or origins.open_site(life) or "an unknown place"] += 1
    items = c.most_common()
    text = ", ".join("%s (%s)" % (s, fmt_int(n)) for s, n in items[:limit])
    if len(items) > limit:
        text += " and %d more sites" % (len(items) - limit)
    return text


def _top_site(lives: Sequence[Life], origins: Origins) -> Optional[str]:
    c = Counter(origins.engine_site(lf) or origins.open_site(lf) for lf in lives)
    c.pop(None, None)
    return c.most_common(1)[0][0] if c else None


def _server_evidence(server: Sequence[Life], origins: Origins) -> str:
    """Counts per evidence type, the error codes the pool saw, the call sites."""
    from .server_end import SERVER_EVIDENCE
    from .join import SERVER_GONE_CODES

    kinds = Counter()
    for lf in server:
        for kind in lf.server_evidence or ():
            kinds[kind] += 1
    both = sum(1 for lf in server if lf.server_evidence and "agent_error" in lf.server_evidence
               and any(k.startswith("kernel") for k in lf.server_evidence))
    parts = []
    for kind, text in SERVER_EVIDENCE.items():
        n = kinds.get(kind, 0)
        if not n:
            continue
        if kind == "agent_error":
            codes = Counter(lf.server_code for lf in server if lf.server_code is not None)
            text += " (%s)" % ", ".join("%d %s × %s" % (code, SERVER_GONE_CODES.get(code, ""), fmt_int(k))
                                       for code, k in codes.most_common())
        parts.append("%s: %s" % (text, fmt_int(n)))
    evidence = "Evidence — " + "; ".join(parts) + "."
    if both:
        evidence += " Both layers agree on %s." % plural(both, "of them", "of them")
    wires = Counter(lf.wire_state for lf in server)
    evidence += (" Each counts once, as cause 'server', with the wire state observed (%s; not_sent: the "
                 "client library had already dropped the socket). Opened through: %s." % (
                     ", ".join("%s %s" % (w, fmt_int(k)) for w, k in wires.most_common()),
                     _sites_text(server, origins)))
    return evidence


def _fork_finding(shared: Sequence[Sequence[Life]], origins: Origins) -> Finding:
    """Connections held by several processes through fork and ended in more than one."""
    n = len(shared)
    handles = sum(sum(1 for lf in m if lf.cause is not None) for m in shared)
    by_child = 0
    causes = Counter()
    for members in shared:
        root = members[0]
        first = next((lf for lf in members if lf.copy_of is None), root)
        if first is not root and first.pid != root.pid:
            by_child += 1
        causes[first.cause] += 1
    evidence = ("%s opened in one process and inherited by forked children had %s ended, one per process. "
                "A fork copies the socket, so the first COM_QUIT from any process ends the server connection "
                "for all of them; each connection is counted once, by that first end (%s), and the other %s "
                "are listed as copies (fork_copies). In %s, the first end came from a child, not from the "
                "process that opened it. Opened at: %s." % (
                    plural(n, "connection"), plural(handles, "handle"),
                    ", ".join("%s %s" % (c, fmt_int(k)) for c, k in causes.most_common()),
                    plural(handles - n, "end"), plural(by_child, "connection"),
                    _sites_text([m[0] for m in shared], origins)))
    fix = ("Do not use a connection on both sides of a fork: in the child, discard the inherited pool "
           "(`engine.dispose(close=False)`, SQLAlchemy ≥ 1.4.33) or open new connections; with "
           "multiprocessing, create Engines in the worker (initializer) or use the 'spawn' start method.")
    return Finding("warning", "%s shared by forked processes and ended in more than one" % (
        plural(n, "connection was", "connections were")), evidence, fix, _top_site([m[0] for m in shared], origins), n)


@dataclasses.dataclass
class Facts:
    """The finished pieces of a report that the rules look at (never raw events)."""

    connections: Connections
    com_quit: ComQuit
    gc: Gc
    drops: Sequence[Drop]
    patterns: Sequence[Pattern]
    engines: Sequence[EngineSite]
    layers: Layers
    ended: Sequence[Life]
    origins: Origins
    capture_status: str
    capture_detail: str
    lost: Dict[str, int]
    exit_status: Optional[int]
    notes: Sequence[dict]
    malformed: int
    shared: Sequence[Sequence[Life]] = ()
    lacks: Optional[str] = None   # analysis.capture.describe_lacks: an older revision's missing fields
    unflushed: Sequence[int] = ()  # pids whose agent ended without its exit flush (report._unflushed)

    @property
    def by_cause(self) -> Dict[str, int]:
        return self.com_quit.by_cause


def _engine_per_call(f: Facts) -> List[Finding]:
    """Engines created per call and never disposed (the incident's root cause)."""
    engines = f.engines
    out: List[Finding] = []
    for site in engines:
        if site.created < 2 or site.disposed >= site.created:
            continue
        undisposed = site.created - site.disposed
        pool = site.pool_class or "pool"
        if site.pool_size is not None:
            pool += " pool_size %d" % site.pool_size
            if site.max_overflow is not None:
                pool += ", max_overflow %d" % site.max_overflow
        gc_n = site.connections_by_cause.get(ev.GC, 0)
        evidence = "%s (%s) created at %s, %s disposed" % (
            plural(site.created, "Engine"), pool, site.where,
            "none" if site.disposed == 0 else fmt_int(site.disposed))
        if site.max_live_engines > 1:
            evidence += "; up to %s alive at once" % fmt_int(site.max_live_engines)
        evidence += ". Their %s ended by: %s." % (
            plural(site.connections, "connection"),
            _causes_text(site.connections_by_cause, site.gc_by_generation))
        evidence += (" An Engine sits in a reference cycle, so dropping it frees neither it nor its "
                     "pool: only a garbage collection of the generation it reached does — late, and "
                     "many at once.")
        # What went wrong is what happened to the connections: left to the GC, to shutdown, or
        # never closed. With NullPool (the study's experiment 3) every connection is closed at
        # checkin and an Engine per call only costs its creation: worth knowing, not an error.
        left = site.connections - site.connections_by_cause.get(ev.EXPLICIT_CLOSE, 0) \
            - site.connections_by_cause.get(ev.SERVER, 0)
        api = engine_api(site)
        title = "%s ran %s at %s and %s" % (
            api, plural(site.created, "time"), site.where,
            "no Engine was disposed" if site.disposed == 0
            else "%s of the Engines were never disposed" % fmt_int(undisposed))
        if left <= 0:
            # Only what happened: Engines that opened no connection closed none by close().
            title = "%s ran %s at %s; %s" % (
                api, plural(site.created, "time"), site.where,
                "its Engines opened no connection" if site.connections == 0
                else "every connection was closed by close()")
            fix = ("Nothing leaks here, but each call builds a new Engine and pool: create it once at "
                   "start-up and reuse it.")
            out.append(Finding("info", title, evidence, fix, site.call_site, site.created))
            continue
        severity = "error" if (gc_n or site.created >= 10) else "warning"
        fix = FIX_ASYNC_ENGINE_PER_CALL if api == "create_async_engine()" else FIX_ENGINE_PER_CALL
        out.append(Finding(severity, title, evidence, fix, site.call_site, site.created))
    return out


def _leaking_engine_sites(engines: Sequence[EngineSite]) -> List[EngineSite]:
    """Call sites whose per-call, undisposed Engines left connections to the collector."""
    return [s for s in engines if s.created >= 2 and s.disposed < s.created and s.connections_by_cause.get(ev.GC)]


def _pool_bound_exceeded(f: Facts) -> List[Finding]:
    """Pool bound exceeded by many Engines."""
    engines = f.engines
    out: List[Finding] = []
    for site in engines:
        bound = pool_bound(site)
        if bound is None or site.max_live_connections <= bound or site.engines_at_max < 2:
            continue
        title = "connections from %s reached %s at once, past the %s one pool allows" % (
            site.where, fmt_int(site.max_live_connections), fmt_int(bound))
        evidence = ("At %s s %s were open across %s created at %s; one %s is bounded at %s "
                    "(pool_size %s + max_overflow %s), but each Engine has its own pool, so the bound "
                    "multiplies with the number of live Engines." % (
                        fmt_s(site.max_live_connections_t_s or 0.0),
                        plural(site.max_live_connections, "connection"),
                        plural(site.engines_at_max, "Engine"), site.where, site.pool_class or "pool",
                        fmt_int(bound), site.pool_size, site.max_overflow or 0))
        fix = ("Share one Engine (one pool) across calls and threads and size pool_size + max_overflow "
               "for the number of worker threads; keep servers × (pool_size + max_overflow) below the "
               "server's max_connections.")
        out.append(Finding("error", title, evidence, fix, site.call_site, site.max_live_connections))
    return out


def _closed_by_gc(f: Facts) -> List[Finding]:
    """Connections destroyed by the garbage collector."""
    com_quit, gc, drops, patterns, ended, origins = f.com_quit, f.gc, f.drops, f.patterns, f.ended, f.origins
    out: List[Finding] = []
    gc_lives = [lf for lf in ended if lf.cause == ev.GC]
    if gc_lives:
        n = len(gc_lives)
        ncoll = len(gc.that_closed_connections)
        evidence = "%s (%s) in %s. " % (
            plural(n, "connection") + " were destroyed by the cyclic garbage collector",
            _gen_text(com_quit.gc_by_generation), plural(ncoll, "collection"))
        gc_drops = [d for d in drops if d.cause == ev.GC]
        if gc_drops:
            big = largest_drop(gc_drops, at_exit=True)
            evidence += "The largest fall: %s. " % big.explanation
        for p in patterns:
            if p.regular and p.drops:
                evidence += "Repeating: %s. " % p.text
        evidence += "Opened through: %s." % _sites_text(gc_lives, origins)
        fix = ("Close what you open: `with Session() as session:` or `session.close()`, "
               "`with engine.connect() as conn:`, `conn.close()`; do not leave connections in "
               "reference cycles. With one shared Engine its pool closes and reuses connections "
               "itself.")
        per_call = _leaking_engine_sites(f.engines)
        if per_call:
            # Closing the session is not enough when the Engine is per call: close() returns the
            # connection to that Engine's pool, which sits in the Engine's reference cycle, so the
            # connection stays open until a collection (tests/unit/test_analysis_report.py pins it).
            fix = ("Share one Engine (see the %s finding for %s): closing the Session or "
                   "Connection only returns the connection to the per-call Engine's pool, and that pool "
                   "is in the Engine's reference cycle, so the connection stays open until a collection "
                   "unless the Engine is disposed." % (engine_api(per_call[0]), per_call[0].where))
        out.append(Finding("warning", "%s were closed by the garbage collector, not by close()" % (
            plural(n, "connection")), evidence, fix, _top_site(gc_lives, origins), n))
    return out


def _never_closed(f: Facts) -> List[Finding]:
    """Never closed."""
    ended, origins, exit_status = f.ended, f.origins, f.exit_status
    out: List[Finding] = []
    never = [lf for lf in ended if lf.cause == ev.NEVER_CLOSED]
    if never:
        status = "" if exit_status is None else " (exit status %s)" % exit_status
        evidence = ("The process ended%s with them open, so no COM_QUIT was sent: the server counts "
                    "each as an aborted client (Aborted_clients) and may log 'Aborted connection'. "
                    "Opened at: %s." % (status, _sites_text(never, origins)))
        fix = ("Close connections and dispose Engines before the program exits (a `finally:` block or "
               "an atexit handler); avoid os._exit() and dying of unhandled signals with connections open.")
        out.append(Finding("warning", "%s never closed: no COM_QUIT was sent" % (
            plural(len(never), "connection was", "connections were")), evidence, fix,
            _top_site(never, origins), len(never)))
    return out


def _unattributed(f: Facts) -> List[Finding]:
    """Unknown."""
    ended = f.ended
    out: List[Finding] = []
    unknown = [lf for lf in ended if lf.cause == ev.UNKNOWN]
    if unknown:
        reasons = Counter(lf.reason or "no evidence" for lf in unknown)
        evidence = "; ".join("%s × %s" % (fmt_int(k), r) for r, k in reasons.most_common(3))
        out.append(Finding("warning", "%s could not be attributed" % plural(len(unknown), "COM_QUIT"),
                           evidence + ".",
                           "Check `trace-quit doctor` for missing probes; trace-quit never guesses a cause.",
                           None, len(unknown)))
    return out


def _not_on_the_wire(f: Facts) -> List[Finding]:
    """COM_QUIT not seen on the wire."""
    ended, origins, lost = f.ended, f.origins, f.lost
    out: List[Finding] = []
    # Only a mysql_close the kernel probed is expected to send COM_QUIT: the socket-level
    # drivers' destructions (PyMySQL, aiomysql, ...) never do, which aborted.py reports.
    silent = [lf for lf in ended if lf.wire_state == ev.WIRE_NOT_SENT and lf.cause != ev.SERVER
              and lf.bpf_end is not None and lf.bpf_end.k == ev.BPF_CLOSE]
    if silent:
        out.append(Finding(
            "warning", "%s sent no COM_QUIT on the socket" % plural(len(silent), "mysql_close call"),
            "The kernel's send probes saw no COM_QUIT inside mysql_close for them: the socket was "
            "already unusable (the server or the network ended it) or send events were lost "
            "(lost events: %s)." % fmt_int(sum(lost.values())),
            "Look for server-side timeouts or kills around those times (wait_timeout, KILL).",
            _top_site(silent, origins), len(silent)))
    return out


def _server_ended(f: Facts) -> List[Finding]:
    """Server-ended."""
    ended, origins = f.ended, f.origins
    out: List[Finding] = []
    server = [lf for lf in ended if lf.cause == ev.SERVER]
    if server:
        out.append(Finding(
            "warning", "%s ended by the server first (KILL, wait_timeout, restart)" % plural(
                len(server), "connection was", "connections were"),
            _server_evidence(server, origins),
            "Lower the pool's pool_recycle below the server's wait_timeout and use pool_pre_ping=True; "
            "handle 2006/2013 by reconnecting.",
            _top_site(server, origins), len(server)))
    return out


def _shared_through_fork(f: Facts) -> List[Finding]:
    """Shared through fork."""
    origins, shared = f.origins, f.shared
    out: List[Finding] = []
    if shared:
        out.append(_fork_finding(shared, origins))
    return out


def _implicit_closes(f: Facts) -> List[Finding]:
    """Refcount / shutdown: correct but implicit."""
    ended, origins = f.ended, f.origins
    out: List[Finding] = []
    refcount = [lf for lf in ended if lf.cause == ev.REFCOUNT]
    if refcount:
        out.append(Finding(
            "info", "%s closed only when the last reference was dropped" % (
                plural(len(refcount), "connection was", "connections were")),
            "Destroyed while open, outside any collection (refcount). Opened at: %s." % _sites_text(refcount, origins),
            "Call close() (or use a with-block) so the close does not depend on when the last reference goes away.",
            _top_site(refcount, origins), len(refcount)))
    shutdown = [lf for lf in ended if lf.cause == ev.SHUTDOWN]
    if shutdown:
        out.append(Finding(
            "info", "%s still open at interpreter shutdown" % plural(
                len(shutdown), "connection was", "connections were"),
            "Destroyed while the interpreter was finalising (GC callbacks do not run then). Opened at: %s."
            % _sites_text(shutdown, origins),
            "Close connections (or dispose the Engine) before the program ends; the order of destruction "
            "at shutdown is not defined.",
            _top_site(shutdown, origins), len(shutdown)))
    return out


def _capture_status(f: Facts) -> List[Finding]:
    """The capture itself: damaged or truncated."""
    connections, capture_status, capture_detail = f.connections, f.capture_status, f.capture_detail
    out: List[Finding] = []
    if capture_status == "damaged":
        out.append(Finding("warning", "the capture is %s" % capture_detail,
                           "Records after the damage were not read; counts cover the readable part only.",
                           "Re-record if the numbers matter; keep the capture on a local disk.", None, None))
    elif capture_status == "truncated":
        out.append(Finding("warning", "the capture is truncated (no trailer)",
                           "The tracer stopped before finishing the file (killed, or the disk filled); "
                           "%s still open when it stopped %s no cause." % (
                               plural(connections.open_at_end, "connection"),
                               "has" if connections.open_at_end == 1 else "have"),
                           "Let the tracer finish (Ctrl-C once stops the program and still writes the trailer).",
                           None, None))
    return out


def _lost_and_malformed(f: Facts) -> List[Finding]:
    """Events lost by a layer, records the schema refused."""
    lost, malformed = f.lost, f.malformed
    out: List[Finding] = []
    total_lost = sum(lost.values())
    if total_lost:
        out.append(Finding("warning", "%s lost" % plural(total_lost, "event was", "events were"),
                           "Lost per source: %s. Counts may be short by that much." % ", ".join(
                               "%s %s" % (s, fmt_int(n)) for s, n in sorted(lost.items()) if n),
                           "Reduce the event rate (fewer probes) or let the tracer drain more often.", None,
                           total_lost))
    if f.unflushed:
        n = len(f.unflushed)
        title = "the agent's last records from %s may be missing" % plural(n, "process", "processes")
        out.append(Finding("warning", title,
                           "%s ended without the agent's exit flush (killed by a signal?): what it had queued, up "
                           "to 50 ms or 256 records, was lost without being counted. Pids: %s." % (
                               "It" if n == 1 else "They", ", ".join(str(p) for p in f.unflushed[:10])
                               + (" and %d more" % (n - 10) if n > 10 else "")),
                           "Stop services with SIGTERM/SIGINT (not SIGKILL) and let their workers exit.", None, n))
    if malformed:
        out.append(Finding("warning", "%s not matching the event schema were left out" % plural(malformed, "record"),
                           "Their fields did not match their kind's declaration (tracer/events.py, KINDS).",
                           "Record with a matching trace-quit version.", None, malformed))
    return out


def _older_revision(f: Facts) -> List[Finding]:
    """A capture of an older schema revision: the fields it lacks are unknown, not false."""
    if not f.lacks:
        return []
    return [Finding("info", "the capture is of an older format revision", f.lacks[0].upper() + f.lacks[1:] + ".",
                    "Record again with this trace-quit to have every field.", None, None)]


def _missing_layers(f: Facts) -> List[Finding]:
    """A layer that did not record: what the report cannot say without it."""
    layers = f.layers
    out: List[Finding] = []
    if not layers.bpf:
        out.append(Finding("info", "the eBPF layer was not attached",
                           "Causes come from the agent alone and no COM_QUIT is confirmed on the wire "
                           "(wire: unobserved).",
                           "Run the tracer as root (sudo trace-quit -- …); `trace-quit doctor` says what is missing.",
                           None, None))
    elif not layers.wire:
        out.append(Finding("info", "COM_QUITs were not observed on the wire",
                           "The kernel's send probes were not attached, so wire confirmation is 'unobserved'.",
                           "See `trace-quit doctor` for the send probes.", None, None))
    if not layers.agent:
        out.append(Finding("info", "the Python agent was not loaded",
                           "Causes come from the kernel alone: no Python stacks, collection ids, thread names "
                           "or Engine call sites.",
                           "Start the program under trace-quit (`trace-quit -- python …`) so the agent loads.",
                           None, None))
    return out


def _failed_connects_and_notes(f: Facts) -> List[Finding]:
    """Failed connects (no COM_QUIT), and the tracer's own warnings."""
    connections, notes = f.connections, f.notes
    out: List[Finding] = []
    if connections.failed:
        out.append(Finding("info", "%s failed" % plural(connections.failed, "connect"),
                           "Their later mysql_close sends no COM_QUIT; they are not counted as COM_QUITs.",
                           "Nothing to fix unless the failures are unexpected.", None, connections.failed))
    for n in notes:
        if n.get("level") in ("error", "warning"):
            out.append(Finding("warning", "tracer: %s" % n.get("text"), "A note the tracer wrote into the capture.",
                               "See `trace-quit doctor`.", None, None))
    return out


#: The rules, each a small function of the report's facts; their findings are sorted errors first.
RULES: List[Callable[[Facts], List[Finding]]] = [
    _engine_per_call, _pool_bound_exceeded, _closed_by_gc, _never_closed, _unattributed, _not_on_the_wire,
    _server_ended, _shared_through_fork, _implicit_closes, _capture_status, _lost_and_malformed, _older_revision,
    _missing_layers, _failed_connects_and_notes,
]


def find(facts: Facts) -> List[Finding]:
    """Every finding of every rule, errors first (stable within a severity: rule order)."""
    out: List[Finding] = []
    for rule in RULES:
        out.extend(rule(facts))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    out.sort(key=lambda f: rank.get(f.severity, len(rank)))
    return out
