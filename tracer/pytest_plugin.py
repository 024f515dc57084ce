"""pytest plugin: which test opened each connection that the garbage collector (or nothing) closed.

Off until asked (``pytest --trace-quit``, or ``trace_quit = true`` in the ini file). It loads
trace-quit's in-process agent into the pytest process itself — no launcher, no root, no eBPF —
reads the agent's channel at test boundaries (and every few milliseconds from a reader
thread, so the 1 MiB FIFO never fills), and keeps a ``Ledger``: every connection opened
during the run belongs to the test whose setup/call/teardown was running when it opened, and
keeps that test when it is destroyed later (a cycle the GC breaks two tests on).

Causes are the agent's: ``explicit_close``, ``refcount``, ``gc`` (with the generation),
``unknown``. A connection still open when the session ends is ``open_at_end``: the
interpreter's finalisation closes it (``shutdown``) or nothing does (``never_closed``); the
plugin reports before that happens, so both names select it in ``--trace-quit-fail``.

``--trace-quit-fail=gc,shutdown``: after each test's teardown, if a connection the test
opened is still open, the plugin runs ``gc.collect()`` (up to three passes, while one stays
open), so cyclic garbage the test left is destroyed now, while the test can still fail, and
not during a later test; then it turns the teardown report of a test that opened such a
connection into a failure whose message carries the Engine's creation chain. Connections
still open at the end can only be known then: they make the session fail and are listed by
test in the summary. At session end (every mode) the same collection runs while any
connection is open, so cyclic garbage counts as ``gc`` rather than ``open_at_end``.

Hard-wired limits (docs/pytest-plugin.md): the agent is process-wide, so tests running
threads that open connections after their test ended are charged to the test running then.
"""

import bisect
import collections
import json
import os
import sys
import threading
import time

import pytest

#: Causes a connection's end can have here; the leaks are the last three.
EXPLICIT = "explicit_close"
REFCOUNT = "refcount"
GC = "gc"
UNKNOWN = "unknown"
OPEN_AT_END = "open_at_end"
LEAKS = (GC, UNKNOWN, OPEN_AT_END)
#: What ``--trace-quit-fail`` accepts, and which of our causes each selects.
FAIL_CHOICES = {GC: (GC,), "shutdown": (OPEN_AT_END,), "never_closed": (OPEN_AT_END,),
                UNKNOWN: (UNKNOWN,), REFCOUNT: (REFCOUNT,)}
OUTSIDE = "<outside any test>"
READ_INTERVAL_S = 0.02
USER_PROPERTY = "trace_quit_leak"


def pytest_addoption(parser):
    group = parser.getgroup("trace-quit", "trace-quit: connections closed by the GC or never closed")
    group.addoption("--trace-quit", action="store_true", default=None, dest="trace_quit",
                    help="attribute every MySQL connection to the test that opened it; list the leaks")
    group.addoption("--trace-quit-fail", dest="trace_quit_fail", metavar="CAUSES",
                    help="fail the test that opened a connection ended by these causes "
                         "(comma-separated: %s); implies --trace-quit" % ",".join(FAIL_CHOICES))
    group.addoption("--trace-quit-capture", dest="trace_quit_capture", metavar="FILE",
                    help="also write a capture `trace-quit report FILE` reads; implies --trace-quit")
    parser.addini("trace_quit", type="bool", default=False, help="turn the trace-quit plugin on")
    parser.addini("trace_quit_fail", default="", help="like --trace-quit-fail")


def _fail_causes(text):
    """``gc,shutdown`` -> the set of our causes it selects; a usage error names the bad word."""
    causes = set()
    for word in (w.strip() for w in (text or "").split(",")):
        if not word:
            continue
        if word not in FAIL_CHOICES:
            raise pytest.UsageError("--trace-quit-fail: unknown cause %r: choose from %s"
                                    % (word, ", ".join(FAIL_CHOICES)))
        causes.update(FAIL_CHOICES[word])
    return frozenset(causes)


def _settings(config):
    opt = config.option
    fail_text = getattr(opt, "trace_quit_fail", None) or config.getini("trace_quit_fail")
    capture = getattr(opt, "trace_quit_capture", None)
    on = bool(getattr(opt, "trace_quit", None) or config.getini("trace_quit") or fail_text or capture)
    return on, _fail_causes(fail_text), capture


def pytest_configure(config):
    on, fail, capture = _settings(config)
    if not on:
        return
    if _is_xdist_controller(config):
        # Tests run in the workers: each loads its own agent; the controller merges.
        config.pluginmanager.register(Controller(config, capture), "trace-quit-controller")
        return
    worker = getattr(config, "workerinput", {}).get("workerid")
    if capture and worker:
        capture = "%s.%s" % (capture, worker)
    plugin = TraceQuit(config, fail, capture, worker)
    plugin.start()
    config.pluginmanager.register(plugin, "trace-quit")


def _is_xdist_controller(config):
    if hasattr(config, "workerinput"):
        return False
    numprocesses = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(numprocesses) or (dist not in (None, "no") and bool(getattr(config.option, "tx", None)))


# --- the agent, in this process -------------------------------------------------------------

def load_agent(channel_path):
    """Start trace-quit's agent in this process, sending to ``channel_path``; return it.

    The same loading as the launcher's bootstrap (by path, under the private module name
    ``_trace_quit_agent``), and today's entry point ``runtime.install()``, which reads the
    channel from the environment: the variable is set only for that call, so processes the
    tests spawn do not inherit it. ``None`` when an agent already runs here (pytest itself
    under ``trace-quit run``): its events go to that tracer, not to us.
    """
    import importlib.util

    from trace_quit.tracer import agent as agent_pkg

    if "_trace_quit_agent" in sys.modules:
        runtime = sys.modules.get("_trace_quit_agent.runtime")
        return None if runtime is None or runtime.AGENT is not None else _install(runtime, channel_path)
    init = os.path.join(agent_pkg.AGENT_DIR, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "_trace_quit_agent", init, submodule_search_locations=[agent_pkg.AGENT_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_trace_quit_agent"] = module
    spec.loader.exec_module(module)
    from _trace_quit_agent import runtime  # noqa: E402 (loaded by path above)

    return _install(runtime, channel_path)


def _install(runtime, channel_path):
    start = getattr(runtime, "start", None)
    if start is not None:
        # The agent's interface: start(channel_path, *, attached=False) -> Agent.
        return start(channel_path)
    from trace_quit.tracer.agent import ENV_CHANNEL

    saved = os.environ.get(ENV_CHANNEL)
    os.environ[ENV_CHANNEL] = channel_path
    try:
        return runtime.install()
    finally:
        if saved is None:
            os.environ.pop(ENV_CHANNEL, None)
        else:
            os.environ[ENV_CHANNEL] = saved


# --- what happened to each connection, per test --------------------------------------------

class Ledger:
    """Agent events in, per-test connection and engine outcomes out (pure: unit-testable)."""

    def __init__(self, root=None):
        self.root = root    # sites under this directory are shown relative to it (pytest's rootdir)
        self._starts = []   # t of each test's start, ascending
        self._tests = []    # nodeid for each start (None: between tests)
        self.conns = {}     # (pid, conn) -> record of the live connection at that address
        self.ended = []     # records of connections that ended
        self.engines = {}   # (pid, engine id) -> record
        self.engines_all = []

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
        for e in sorted(events, key=lambda e: e.get("t") or 0):
            try:
                self._one(e)
            except (TypeError, ValueError, KeyError):
                pass  # a malformed line: the capture keeps it, the ledger ignores it

    def _one(self, e):
        k = e.get("k")
        pid = e.get("pid")
        t = e.get("t") or 0
        if k == "conn_open":
            stack = [_relative(f, self.root) for f in e.get("stack") or [] if isinstance(f, str)]
            self.conns[(pid, e["conn"])] = {
                "test": self.owner(t), "t": t, "pid": pid, "conn": e["conn"], "stack": stack,
                "engine": None, "cause": None, "gen": None, "ended_in": None, "records": [e]}
        elif k in ("conn_close", "conn_destroy"):
            rec = self.conns.pop((pid, e["conn"]), None)
            if rec is None:
                return  # opened before the plugin started
            from trace_quit.analysis.attribute import decide_agent_end  # the report's rules, not our own
            verdict = decide_agent_end(rec.pop("records") + [e])
            # "shutdown" cannot reach us before the report (finalisation comes later); kept apart anyway.
            cause = verdict.cause if verdict is not None else UNKNOWN
            rec["cause"] = OPEN_AT_END if cause == "shutdown" else cause
            rec["gen"] = verdict.generation
            rec["ended_in"] = self.owner(t)
            self.ended.append(rec)
        elif k == "pool" and (pid, e.get("conn")) in self.conns:
            rec = self.conns[(pid, e.get("conn"))]
            rec["records"].append(e)  # a server-gone error in an invalidation decides the end (server)
            engine = self.engines.get((pid, e.get("engine"))) if e.get("ev") == "connect" else None
            if rec is not None and engine is not None:
                rec["engine"] = engine
        elif k == "engine_create":
            engine = {"test": self.owner(t), "site": _relative(e.get("site"), self.root), "url": e.get("url"),
                      "pool_class": e.get("pool_class"), "disposed": False}
            self.engines[(pid, e["engine"])] = engine
            self.engines_all.append(engine)
        elif k == "engine_dispose":
            engine = self.engines.get((pid, e["engine"]))
            if engine is not None:
                engine["disposed"] = True

    def close_open(self):
        """The session is over: what is still open is ``open_at_end``."""
        for rec in self.conns.values():
            rec["cause"] = OPEN_AT_END
            rec["ended_in"] = None
            self.ended.append(rec)
        self.conns = {}

    def leaks_of(self, nodeid, causes):
        return [r for r in self.ended if r["test"] == nodeid and r["cause"] in causes]

    def results(self):
        """{nodeid: {"opened": n, "causes": {cause: n}, "gc_by_gen": {...}, "leaks": [...], "engines": [...]}}."""
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
            if not engine["disposed"]:
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
    """The innermost frame of the stack that is not a library's (site-packages, the stdlib)."""
    stdlib = os.path.dirname(os.__file__)
    for frame in stack:
        path = frame.split(":", 1)[0]
        if "-packages" in path or path.startswith(stdlib) or path.startswith("<"):
            continue
        return frame
    return None  # SQLAlchemy's pool is deeper than the agent's stack: the engine's site is the chain


def describe_cause(cause, gen=None):
    if cause == GC:
        return "closed by the garbage collector" + (" (generation %s)" % gen if gen is not None else "")
    if cause == OPEN_AT_END:
        return "still open when the session ended (closed at shutdown, or never)"
    if cause == UNKNOWN:
        return "destroyed, cause unknown (gc.callbacks was emptied)"
    if cause == REFCOUNT:
        return "destroyed without close() when its last reference went"
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


def summary_lines(results):
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
        parts = [_cause_counts(row["leaks"])]
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
    lines.append("%d connection(s) opened; %s; %d test(s) with leaks" % (
        opened, ", ".join("%s %d" % (c, totals[c]) for c in (EXPLICIT, REFCOUNT, GC, UNKNOWN, OPEN_AT_END)),
        tests_with_leaks))
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


# --- the plugin in the process that runs the tests --------------------------------------------

class TraceQuit:
    """Runs the agent and the ledger in the process that runs the tests."""

    def __init__(self, config, fail, capture, worker):
        self.config = config
        self.fail = fail
        self.capture = capture
        self.worker = worker
        self.ledger = Ledger(str(getattr(config, "rootpath", "") or "") or None)
        self.agent = None
        self.channel = None
        self.writer = None
        self.reported = set()   # ids of leak records already turned into a failure
        self.late = []          # (nodeid, leak) found after the test's own report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = None
        self.results = None

    def start(self):
        from trace_quit.tracer.channel import AgentChannel

        if self.capture:
            from trace_quit.tracer.capture import CaptureExistsError, CaptureWriter

            try:
                self.writer = CaptureWriter(self.capture)
            except CaptureExistsError:
                raise pytest.UsageError("%s exists: remove it or choose another --trace-quit-capture"
                                        % self.capture) from None
            except OSError as exc:
                raise pytest.UsageError("cannot write the capture %s: %s" % (self.capture, exc.strerror)) from None
            self.writer.write_header(self._header())
            self.writer.emit({"k": "child_start", "t": time.monotonic_ns(), "src": "tracer", "pid": os.getpid()})
        self.channel = AgentChannel(os.getuid(), os.getgid())
        self.agent = load_agent(self.channel.path)
        if self.agent is None:
            self.channel.close()
            self.channel = None
            self.config.issue_config_time_warning(pytest.PytestConfigWarning(
                "trace-quit: an agent already runs in this process (pytest under `trace-quit run`?): "
                "the plugin stays off"), stacklevel=2)
            return
        self._reader = threading.Thread(target=self._read_loop, name="trace-quit-pytest", daemon=True)
        self._reader.start()

    def _header(self):
        from trace_quit.tracer import __version__
        from trace_quit.tracer import events as ev

        import platform
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        return {"argv": ev.redact_argv(list(sys.argv)),
                "tracer": {"version": __version__, "pid": os.getpid(), "python": platform.python_version(),
                           "argv": ev.redact_argv(list(sys.argv)), "pytest_plugin": True,
                           "worker": self.worker},
                "child_pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "user": user,
                "cwd": os.getcwd(), "layers": {"bpf": False, "agent": True, "sampler": False}}

    # reading the channel
    def _read_loop(self):
        while not self._stop.wait(READ_INTERVAL_S):
            self.drain(flush=False)

    def drain(self, flush=True):
        """Move what the agent wrote into the ledger (and the capture)."""
        if self.channel is None:
            return
        with self._lock:
            if flush:
                self.agent.flush()
            events = self.channel.read_events()
            if not events:
                return
            self.ledger.feed(events)
            if self.writer is not None:
                for e in events:
                    self.writer.emit(e)

    # test boundaries
    def pytest_runtest_logstart(self, nodeid, location):
        self.drain()
        with self._lock:
            self.ledger.begin(nodeid, time.monotonic_ns())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when != "teardown" or self.channel is None:
            return
        report = outcome.get_result()
        if self.fail:
            # The test's cyclic garbage dies now, charged to it, while it can still fail.
            collect_while(lambda: self._open_of(item.nodeid))
        self.drain()
        if not self.fail:
            return
        with self._lock:
            leaks = [r for r in self.ledger.leaks_of(item.nodeid, self.fail) if id(r) not in self.reported]
            self.reported.update(id(r) for r in leaks)
            self._late_leaks(item.nodeid)
        if not leaks:
            return
        message = failure_message(item.nodeid, [leak_detail(r) for r in leaks])
        report.outcome = "failed"
        report.longrepr = message if not report.longrepr else "%s\n\n%s" % (report.longrepr, message)
        report.user_properties.append((USER_PROPERTY, len(leaks)))

    def _open_of(self, nodeid):
        """Connections still open that ``nodeid`` opened (any test's when None), after a drain."""
        self.drain()
        with self._lock:
            return sum(1 for r in self.ledger.conns.values() if nodeid is None or r["test"] == nodeid)

    def _late_leaks(self, current):
        # Leaks of earlier tests that ended only now (a collection during another test).
        for rec in self.ledger.ended:
            if rec["test"] != current and rec["cause"] in self.fail and id(rec) not in self.reported:
                self.reported.add(id(rec))
                self.late.append((rec["test"], leak_detail(rec)))

    def pytest_runtest_logfinish(self, nodeid, location):
        with self._lock:
            self.ledger.end(time.monotonic_ns())

    def pytest_report_teststatus(self, report, config):
        return leak_status(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.channel is None:
            return
        # Cyclic garbage left by the run is the GC's, not "open at the end".
        collect_while(lambda: self._open_of(None))
        self.drain()
        with self._lock:
            self.ledger.close_open()
        if self.fail:
            self._late_leaks(None)
            if self.late and session.exitstatus == 0:
                session.exitstatus = 1
        self.results = self.ledger.results()
        self._close_capture(int(exitstatus))  # before a worker reports: the controller merges the parts next
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["trace_quit"] = json.dumps({"results": self.results, "late": self.late})

    def pytest_terminal_summary(self, terminalreporter):
        if self.results is not None:
            write_summary(terminalreporter, self.results, self.late)

    def pytest_unconfigure(self, config):
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self.channel is not None:
            self.drain()
        self._close_capture(None)
        if self.channel is not None:
            stop = getattr(self.agent, "stop", None)
            if stop is not None:
                stop()  # the agent's interface: unhook gc.callbacks and the wrappers
            # Without stop() (today's runtime) the agent stays installed; its writes go to a FIFO
            # it holds a read end of, so they are dropped, never block, never raise.
            self.channel.close()
            self.channel = None

    def _close_capture(self, status):
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        lost = getattr(self.agent, "lost", 0) if self.agent is not None else 0
        writer.emit({"k": "child_exit", "t": time.monotonic_ns(), "src": "tracer", "pid": os.getpid(),
                     "status": status})
        writer.close({"exit_status": status, "lost": {"agent": lost, "bpf": 0}})


def write_summary(terminalreporter, results, late):
    leaky = [n for n, r in results.items() if r["leaks"] or r["engines_not_disposed"]]
    terminalreporter.write_sep("=", "trace-quit: connections the tests did not close", bold=True,
                               yellow=bool(leaky), green=not leaky)
    for line in summary_lines(results):
        terminalreporter.write_line(line)
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


class Controller:
    """Under xdist: merges the workers' results (and capture parts) into one summary (and file)."""

    def __init__(self, config, capture):
        self.config = config
        self.capture = capture
        self.parts = []
        self.late = []
        self.workers = []
        if capture and os.path.lexists(capture):
            raise pytest.UsageError("%s exists: remove it or choose another --trace-quit-capture" % capture)

    def pytest_testnodedown(self, node, error):
        out = getattr(node, "workeroutput", {}) or {}
        self.workers.append(getattr(getattr(node, "gateway", None), "id", None) or out.get("workerid"))
        data = out.get("trace_quit")
        if data:
            data = json.loads(data)
            self.parts.append(data["results"])
            self.late.extend(tuple(x) for x in data["late"])

    @property
    def results(self):
        return merge_results(self.parts)

    def pytest_report_teststatus(self, report, config):
        return leak_status(report)

    def pytest_sessionfinish(self, session, exitstatus):
        if self.late and session.exitstatus == 0:
            session.exitstatus = 1
        if self.capture:
            merge_captures(self.capture, ["%s.%s" % (self.capture, w) for w in self.workers if w])

    def pytest_terminal_summary(self, terminalreporter):
        write_summary(terminalreporter, self.results, self.late)


def merge_captures(path, parts):
    """One capture from the workers' parts: the first header, every event by time, one trailer."""
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
    header["child_pid"] = os.getpid()
    header["tracer"]["worker"] = None
    writer = CaptureWriter(path)
    writer.write_header(header)
    events.sort(key=lambda e: e.get("t") or 0)
    writer.emit({"k": "child_start", "t": (events[0]["t"] if events else time.monotonic_ns()) - 1,
                 "src": "tracer", "pid": os.getpid()})
    for e in events:
        writer.emit(e)
    writer.emit({"k": "child_exit", "t": time.monotonic_ns(), "src": "tracer", "pid": os.getpid(), "status": None})
    writer.close({"exit_status": None, "lost": {"agent": lost, "bpf": 0}, "workers": len(parts)})
