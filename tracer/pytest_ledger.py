"""The pytest plugin's books: which test opened each MySQL connection, and how it ended.

Pure (no pytest, no agent): agent records and test boundaries in, per-test outcomes and the
words the plugin prints out; unit-tested on hand-written records
(tests/unit/test_pytest_plugin_ledger.py). tracer/pytest_plugin.py feeds it.

Only MySQL is this tool's business: connections are the MySQL drivers' (the agent sees no
other), and Engines of other dialects (``sqlite://``, a mocked ``postgresql://``) are counted
once by dialect, never blamed.
"""

import bisect
import collections
import json
import os
import sys
import time

from trace_quit.tracer.records import typed

#: Causes a connection's end can have here; the leaks are the last three.
EXPLICIT = "explicit_close"
REFCOUNT = "refcount"
GC = "gc"
UNKNOWN = "unknown"
OPEN_AT_END = "open_at_end"
SERVER = "server"   # the server ended it first (the report's rule, attribute.decide_agent_end)
LEAKS = (GC, UNKNOWN, OPEN_AT_END)
#: What ``--trace-quit-fail`` accepts, and which of our causes each selects.
FAIL_CHOICES = {GC: (GC,), "shutdown": (OPEN_AT_END,), "never_closed": (OPEN_AT_END,),
                UNKNOWN: (UNKNOWN,), REFCOUNT: (REFCOUNT,)}
OUTSIDE = "<outside any test>"
SESSION_FINISH = "<session finish hooks>"
AT_EXIT = "<exit handlers>"
MYSQL_DIALECTS = ("mysql", "mariadb")
USER_PROPERTY = "trace_quit_leak"  # on a teardown report the plugin failed


def dialect_of(url):
    """``mysql+mysqldb://u:***@h/d`` -> ``mysql``; ``None`` when there is no URL."""
    if not isinstance(url, str) or "://" not in url:
        return None
    return url.split("://", 1)[0].split("+", 1)[0].lower() or None


class Ledger:
    """Agent events in, per-test connection and engine outcomes out."""

    def __init__(self, root=None):
        self.root = root    # sites under this directory are shown relative to it (pytest's rootdir)
        self._starts = []   # t of each test's start, ascending
        self._tests = []    # nodeid for each start (None: between tests)
        self.conns = {}     # (pid, conn) -> record of the live connection at that address
        self.ended = []     # records of connections that ended
        self.engines = {}   # (pid, engine id) -> record (MySQL dialects only)
        self.engines_all = []
        self.other_engines = collections.Counter()  # dialect -> Engines created (not MySQL: not ours)

    # test boundaries, on the agent's clock (time.monotonic_ns)
    def begin(self, nodeid, t):
        self._starts.append(t)
        self._tests.append(nodeid)

    def end(self, t):
        self._starts.append(t)
        self._tests.append(None)

    def owner(self, t):
        i = bisect.bisect_right(self._starts, t) - 1
        return (self._tests[i] if i >= 0 else None) or OUTSIDE

    def feed(self, events):
        for e in sorted(map(typed, events), key=lambda e: e.t or 0):
            try:
                self._one(e)
            except (TypeError, ValueError, KeyError):
                pass  # a malformed line: the capture keeps it, the ledger ignores it

    def _one(self, e):
        k = e.k
        pid = e.pid
        t = e.t or 0
        if k == "conn_open":
            stack = [_relative(f, self.root) for f in e.stack or [] if isinstance(f, str)]
            self.conns[(pid, e.conn)] = {
                "test": self.owner(t), "t": t, "pid": pid, "conn": e.conn, "stack": stack,
                "engine": None, "cause": None, "gen": None, "ended_in": None, "records": [e]}
        elif k in ("conn_close", "conn_destroy"):
            rec = self.conns.pop((pid, e.conn), None)
            if rec is None:
                return  # opened before the plugin started
            from trace_quit.analysis.attribute import decide_agent_end  # the report's rules, not our own
            verdict = decide_agent_end(rec.pop("records") + [e])
            # "shutdown" cannot reach us (the books close before finalisation); kept apart anyway.
            cause = verdict.cause if verdict is not None else UNKNOWN
            rec["cause"] = OPEN_AT_END if cause == "shutdown" else cause
            rec["gen"] = verdict.generation if verdict is not None else None
            rec["ended_in"] = self.owner(t)
            self.ended.append(rec)
        elif k == "pool" and (pid, e.conn) in self.conns:
            rec = self.conns[(pid, e.conn)]
            rec["records"].append(e)  # a server-gone error in an invalidation decides the end (server)
            engine = self.engines.get((pid, e.engine)) if e.ev == "connect" else None
            if rec is not None and engine is not None:
                rec["engine"] = engine
                engine["connections"] += 1
        elif k == "engine_create":
            dialect = dialect_of(e.url)
            if dialect is not None and dialect not in MYSQL_DIALECTS:
                self.other_engines[dialect] += 1
                return
            engine = {"test": self.owner(t), "site": _relative(e.site, self.root), "url": e.url,
                      "pool_class": e.pool_class, "disposed": False, "connections": 0}
            self.engines[(pid, e.engine)] = engine
            self.engines_all.append(engine)
        elif k == "engine_dispose":
            engine = self.engines.get((pid, e.engine))
            if engine is not None:
                engine["disposed"] = True

    def open_records(self, nodeid=None):
        """Connections still open (those ``nodeid`` opened; every test's when None)."""
        return [r for r in self.conns.values() if nodeid is None or r["test"] == nodeid]

    def close_open(self):
        """The process is done with the database: what is still open is ``open_at_end``."""
        for rec in self.conns.values():
            rec["cause"] = OPEN_AT_END
            rec["ended_in"] = None
            self.ended.append(rec)
        self.conns = {}

    def leaks_of(self, nodeid, causes):
        return [r for r in self.ended if r["test"] == nodeid and r["cause"] in causes]

    def late_leaks(self, causes, reported):
        """(nodeid, record) of every leak by ``causes`` not in ``reported`` (ids of records that
        already failed their test): ended ones, and those still open when ``open_at_end`` is asked."""
        late = [(r["test"], r) for r in self.ended if r["cause"] in causes and id(r) not in reported]
        if OPEN_AT_END in causes:
            late.extend((r["test"], r) for r in self.conns.values() if id(r) not in reported)
        return late

    def results(self):
        """{nodeid: {"opened": n, "causes": {cause: n}, "gc_by_gen": {...}, "leaks": [...], "engines": [...]}};
        a connection still open counts as ``open_at_end``."""
        out = {}

        def entry(nodeid):
            return out.setdefault(nodeid, {"opened": 0, "causes": {}, "gc_by_gen": {},
                                           "leaks": [], "engines_not_disposed": []})

        for rec in self.ended + list(self.conns.values()):
            row = entry(rec["test"])
            row["opened"] += 1
            cause = rec["cause"] or OPEN_AT_END
            row["causes"][cause] = row["causes"].get(cause, 0) + 1
            if cause == GC:
                gen = str(rec["gen"])
                row["gc_by_gen"][gen] = row["gc_by_gen"].get(gen, 0) + 1
            if cause in LEAKS:
                row["leaks"].append(leak_detail(rec))
        for engine in self.engines_all:
            # An Engine that never held a MySQL connection (a mocked DBAPI, never connected) leaks nothing.
            if not engine["disposed"] and engine["connections"]:
                entry(engine["test"])["engines_not_disposed"].append(
                    {"site": engine["site"], "url": engine["url"], "pool_class": engine["pool_class"]})
        return out


def _relative(site, root):
    if site and root and site.startswith(root.rstrip(os.sep) + os.sep):
        return site[len(root.rstrip(os.sep)) + 1:]
    return site


def leak_detail(rec):
    """One leaked connection as plain data: its cause and creation chain (JSON-safe, for xdist)."""
    engine = rec.get("engine")
    return {"cause": rec["cause"] or OPEN_AT_END, "gen": rec.get("gen"), "ended_in": rec.get("ended_in"),
            "engine_site": engine["site"] if engine else None, "engine_url": engine["url"] if engine else None,
            "pool_class": engine["pool_class"] if engine else None, "opened_at": _own_frame(rec.get("stack") or [])}


def _own_frame(stack):
    """The innermost frame of the stack that is not a library's (analysis/sites.py decides, by
    package: SQLAlchemy from a source checkout is as much a library as an installed one)."""
    from trace_quit.analysis.sites import is_library_frame  # not at import: pytest loads this module always

    for frame in stack:
        if not is_library_frame(frame):
            return frame
    return None  # SQLAlchemy's pool is deeper than the agent's stack: the engine's site is the chain


def describe_cause(cause, gen=None):
    if cause == GC:
        return "closed by the garbage collector" + (" (generation %s)" % gen if gen is not None else "")
    if cause == OPEN_AT_END:
        return "still open when the process was done (closed at shutdown, or never)"
    if cause == UNKNOWN:
        return "destroyed, cause unknown (gc.callbacks was emptied)"
    if cause == REFCOUNT:
        return "destroyed without close() when its last reference went"
    if cause == SERVER:
        return "ended by the server first (KILL, wait_timeout, restart)"
    return cause


def chain_lines(leak):
    """The creation chain of one leaked connection, one line per link."""
    lines = []
    if leak.get("engine_site"):
        lines.append("engine created at %s (%s, %s)" % (leak["engine_site"], leak.get("engine_url"),
                                                        leak.get("pool_class")))
    if leak.get("opened_at"):
        lines.append("connection opened at %s" % leak["opened_at"])
    return lines


def failure_message(nodeid, leaks):
    counts = collections.Counter((lk["cause"], lk.get("gen")) for lk in leaks)
    lines = ["trace-quit: %s opened %d connection(s) the program did not close:" % (nodeid, len(leaks))]
    for (cause, gen), n in sorted(counts.items(), key=str):
        lines.append("  %d %s" % (n, describe_cause(cause, gen)))
    seen = set()
    for leak in leaks:
        chain = tuple(chain_lines(leak))
        if chain and chain not in seen:
            seen.add(chain)
            lines.extend("    " + line for line in chain)
    return "\n".join(lines)


def summary_lines(results, other_engines=None):
    """The terminal summary's lines: one block per test with leaks, then the totals."""
    lines = []
    totals = collections.Counter()
    tests_with_leaks = 0
    for nodeid in sorted(results):
        row = results[nodeid]
        totals.update(row["causes"])
        if not row["leaks"] and not row["engines_not_disposed"]:
            continue
        tests_with_leaks += 1
        parts = [p for p in (_cause_counts(row["leaks"]),) if p]
        if row["engines_not_disposed"]:
            parts.append("%d engine(s) not disposed" % len(row["engines_not_disposed"]))
        lines.append("%s: %s" % (nodeid, ", ".join(parts)))
        seen = set()
        for leak in row["leaks"]:
            chain = tuple(chain_lines(leak))
            if chain and chain not in seen:
                seen.add(chain)
                lines.extend("    " + line for line in chain)
    opened = sum(r["opened"] for r in results.values())
    shown = (EXPLICIT, REFCOUNT, GC, UNKNOWN, OPEN_AT_END) + ((SERVER,) if totals[SERVER] else ())
    lines.append("%d connection(s) opened; %s; %d test(s) with leaks" % (
        opened, ", ".join("%s %d" % (c, totals[c]) for c in shown),
        tests_with_leaks))
    if other_engines:
        lines.append("Engines of other dialects, not traced: %s" % ", ".join(
            "%s %d" % (d, n) for d, n in sorted(other_engines.items())))
    return lines


def _cause_counts(leaks):
    """``3 gc (gen0 1, gen2 2), 1 open_at_end``: causes in a fixed order, GC generations apart."""
    by = collections.Counter(lk["cause"] for lk in leaks)
    gens = collections.Counter(lk.get("gen") for lk in leaks if lk["cause"] == GC)
    parts = []
    for cause in LEAKS:
        if not by[cause]:
            continue
        text = "%d %s" % (by[cause], cause)
        if cause == GC:
            text += " (%s)" % ", ".join("gen%s %d" % (g, n) for g, n in sorted(gens.items(), key=str))
        parts.append(text)
    return ", ".join(parts)


def write_summary(terminalreporter, results, late, other_engines=None, unfrozen=0, still_open=0):
    leaky = [n for n, r in results.items() if r["leaks"] or r["engines_not_disposed"]]
    terminalreporter.write_sep("=", "trace-quit: connections the tests did not close", bold=True,
                               yellow=bool(leaky), green=not leaky)
    for line in summary_lines(results, other_engines):
        terminalreporter.write_line(line)
    if unfrozen:
        terminalreporter.write_line("gc.freeze() had hidden %d object(s) from the collector: unfrozen at the "
                                    "session's end to look for leaks among them, then frozen again" % unfrozen)
    if still_open:
        terminalreporter.write_line("%d connection(s) still open after the session's finish hooks: exit handlers "
                                    "may yet close them (said on stderr if they do)" % still_open)
    if late:
        terminalreporter.write_line("failed after their report (--trace-quit-fail):", red=True)
        for nodeid, leak in late:
            cause = describe_cause(leak["cause"], leak.get("gen"))
            terminalreporter.write_line("  FAILED %s: 1 connection %s" % (nodeid, cause), red=True)
            for line in chain_lines(leak):
                terminalreporter.write_line("      " + line)


def leak_status(report):
    """A teardown this plugin failed is the test's failure (F), not a teardown error (E)."""
    if report.when == "teardown" and report.failed and any(
            name == USER_PROPERTY for name, _ in getattr(report, "user_properties", ())):
        return "failed", "F", ("FAILED", {"red": True})
    return None


def command_argv():
    """The pytest command as the user typed it: ``python -m pytest ...`` rather than pytest's __main__.py."""
    argv = [str(a) for a in sys.argv]
    if argv and os.path.basename(argv[0]) == "__main__.py" and os.path.basename(os.path.dirname(argv[0])) == "pytest":
        argv = [os.path.basename(sys.executable), "-m", "pytest"] + argv[1:]
    return argv


def merge_results(parts):
    merged = {}
    for part in parts:
        for nodeid, row in part.items():
            if nodeid not in merged:
                merged[nodeid] = json.loads(json.dumps(row))
                continue
            m = merged[nodeid]  # <outside any test> comes from every worker
            m["opened"] += row["opened"]
            for key in ("causes", "gc_by_gen"):
                for c, n in row[key].items():
                    m[key][c] = m[key].get(c, 0) + n
            m["leaks"].extend(row["leaks"])
            m["engines_not_disposed"].extend(row["engines_not_disposed"])
    return merged


def collect_while(still_open, passes=3):
    """Run full collections while ``still_open()`` (at most ``passes``): only when it can matter.

    A full collection of pytest's heap costs ~0.2 s here, so none runs unless a connection it
    could be about is still open. One pass is not always enough: SQLAlchemy's finalizer for a
    garbage checked-out connection returns it to its pool, and that pool (with its Engine)
    becomes garbage only afterwards — the next pass destroys the connection
    (test_known_leaks_exact_per_test_counts, test_session_never_closed)."""
    import gc

    for _ in range(passes):
        if not still_open():
            return
        gc.collect()


def merge_captures(path, parts, header_update, status):
    """One capture from the workers' parts: the first header (with ``header_update``: the
    pytest command, not the workers' ``-c``), every event by time, one trailer with ``status``."""
    from trace_quit.tracer.capture import CaptureWriter

    header = None
    events = []
    lost = 0
    for part in parts:
        try:
            with open(part, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for i, raw in enumerate(lines):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if i == 0:
                header = header or record
            elif record.get("k") == "trailer":
                lost += int((record.get("lost") or {}).get("agent") or 0)
            elif record.get("k") not in ("child_start", "child_exit"):
                events.append(record)
        os.unlink(part)
    if header is None:
        return
    header = {k: v for k, v in header.items() if k not in ("format", "version", "clock", "t", "kernel", "machine")}
    header.update(header_update)
    header["child_pid"] = os.getpid()
    header["tracer"] = dict(header.get("tracer") or {}, worker=None, argv=header_update.get("argv"))
    writer = CaptureWriter(path)
    writer.write_header(header)
    events.sort(key=lambda e: e.get("t") or 0)
    writer.emit({"k": "child_start", "t": (events[0]["t"] if events else time.monotonic_ns()) - 1,
                 "src": "tracer", "pid": os.getpid()})
    for e in events:
        writer.emit(e)
    writer.emit({"k": "child_exit", "t": time.monotonic_ns(), "src": "tracer", "pid": os.getpid(), "status": status})
    writer.close({"exit_status": status, "lost": {"agent": lost, "bpf": 0}, "workers": len(parts)})
