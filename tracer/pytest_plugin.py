"""pytest plugin: which test opened each connection that the garbage collector (or nothing) closed.

Off until asked (``pytest --trace-quit``, or ``trace_quit = true`` in the ini file). It loads
trace-quit's in-process agent into the pytest process itself — no launcher, no root, no eBPF —
reads the agent's channel at test boundaries (and every few milliseconds from a reader
thread, so the 1 MiB FIFO never fills), and keeps a ``Ledger``: every connection opened
during the run belongs to the test whose setup/call/teardown was running when it opened, and
keeps that test when it is destroyed later (a cycle the GC breaks two tests on).

Causes are the agent's: ``explicit_close``, ``refcount``, ``gc`` (with the generation),
``unknown``; the books (tracer/pytest_ledger.py) keep only MySQL's connections and Engines.

The plugin watches until the process is done with the database, not until pytest's own
report: what the session's finish hooks close (conftest ``pytest_sessionfinish``, session
fixtures, ``atexit`` handlers) is attributed as it happens, and only a connection still open
after the exit handlers is ``open_at_end`` (the interpreter's finalisation closes it,
``shutdown``, or nothing does, ``never_closed``: both names select it in
``--trace-quit-fail``). Its ``pytest_sessionfinish`` is the innermost wrapper, so it runs after
every plain implementation (a conftest's too) and before pytest prints the summary and
xdist's worker reports; this module's ``atexit`` handler is registered when pytest loads the
plugin, before any conftest registers one, so it runs after theirs.

``--trace-quit-fail=gc,shutdown``: after each test's teardown, if a connection the test
opened is still open, the plugin runs ``gc.collect()`` (up to three passes, while one stays
open), so cyclic garbage the test left is destroyed now, while the test can still fail, and
not during a later test; then it turns the teardown report of a test that opened such a
connection into a failure whose message carries the Engine's creation chain. Leaks known
only later (open after the finish hooks; garbage ``gc.freeze()`` hid from the collector,
looked for at the session's end) make the session fail and are listed by test. When the
exit handlers then close what the summary counted as open, the plugin says so on stderr and
the exit status follows that final state (tests/integration/test_pytest_plugin.py).

Hard-wired limits (docs/pytest-plugin.md): the agent is process-wide, so tests running
threads that open connections after their test ended are charged to the test running then;
under xdist a worker's books close when it reports to the controller (after its finish
hooks, before its exit handlers).
"""

import atexit
import collections
import json
import os
import sys
import threading
import time

import pytest

from trace_quit.tracer.pytest_controller import Controller
from trace_quit.tracer.pytest_ledger import (  # noqa: F401 (the plugin's public names, as before)
    AT_EXIT, FAIL_CHOICES, GC, LEAKS, OPEN_AT_END, OUTSIDE, SESSION_FINISH, USER_PROPERTY, Ledger, chain_lines,
    collect_while, command_argv, describe_cause, failure_message, leak_detail, leak_status, merge_captures,
    merge_results, summary_lines, write_summary)

READ_INTERVAL_S = 0.02
_ACTIVE = []  # the TraceQuit of this process, finished by _at_exit


def _at_exit():
    """Registered when pytest loads this module, before any conftest: runs after their handlers."""
    while _ACTIVE:
        _ACTIVE.pop().at_exit()


atexit.register(_at_exit)


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
        running = runtime is None or (runtime.AGENT is not None and not getattr(runtime.AGENT, "stopped", False))
        # A stopped agent is an earlier in-process run's (pytester, pytest.main() twice): start anew.
        return None if running else _install(runtime, channel_path)
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
        self.session = None
        self.pytest_status = None   # the session's exit status before the plugin's verdict
        self.status = None          # the exit status pytest returns (after the plugin's verdict)
        self.unfrozen = 0           # objects gc.freeze() had hidden, unfrozen at the end to be looked at
        self.open_at_summary = set()  # ids of the records the summary counted open_at_end

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
        # A worker whose controller reads its final word (Controller.pytest_configure_node) closes its
        # books at exit, like a process without xdist; a worker without one closes them at sessionfinish.
        self.final_path = getattr(self.config, "workerinput", {}).get("trace_quit_final")
        # Only the process's own pytest (its command line): an in-process run (pytester, pytest.main()
        # from a script) closes its books at unconfigure, and never sets the process's exit status.
        params = getattr(self.config, "invocation_params", None)
        whole = params is not None and tuple(params.args or ()) == tuple(sys.argv[1:])
        if (not self.worker and whole) or self.final_path:
            # The books close in this module's exit handler, after the conftests' ones; the agent's
            # own handler (registered now, so run before theirs) would call what they destroy "shutdown".
            atexit.unregister(self.agent.at_exit)
            _ACTIVE.append(self)
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
        argv = ev.redact_argv(command_argv())
        return {"argv": argv,
                "tracer": {"version": __version__, "pid": os.getpid(), "python": platform.python_version(),
                           "argv": argv, "pytest_plugin": True, "worker": self.worker},
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

    def _boundary(self, nodeid, phase):
        """A test boundary: in the ledger (a test's start, its finish, the session's end) and the capture."""
        self.drain()
        t = time.monotonic_ns()
        with self._lock:
            if phase == "finish":
                self.ledger.end(t)
            elif phase in ("setup", "sessionfinish", "exit"):
                self.ledger.begin(nodeid or (SESSION_FINISH if phase == "sessionfinish" else AT_EXIT), t)
            if self.writer is not None:
                self.writer.emit({"k": "test", "t": t, "src": "tracer", "pid": os.getpid(), "nodeid": nodeid,
                                  "phase": phase})

    # test boundaries
    def pytest_runtest_logstart(self, nodeid, location):
        self._boundary(nodeid, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item):
        if self.writer is not None:
            self._boundary(item.nodeid, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item):
        if self.writer is not None:
            self._boundary(item.nodeid, "teardown")

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
            return len(self.ledger.open_records(nodeid))

    def pytest_runtest_logfinish(self, nodeid, location):
        if self.channel is not None:
            self._boundary(nodeid, "finish")

    def pytest_report_teststatus(self, report, config):
        return leak_status(report)

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_sessionfinish(self, session):
        # The innermost wrapper: what follows the yield runs after every plain implementation
        # (a conftest disposing of its Engines) and before pytest's summary and xdist's report.
        if self.channel is not None:
            self._boundary("", "sessionfinish")
        yield
        if self.channel is None:
            return
        self.session = session
        self._settle()
        self.pytest_status = int(session.exitstatus)
        with self._lock:
            self.late = [(nodeid, leak_detail(r)) for nodeid, r in self.ledger.late_leaks(self.fail, self.reported)]
            self.results = self.ledger.results()
            self.open_at_summary = {id(r) for r in self.ledger.conns.values()}
        if self.late and session.exitstatus == 0:
            session.exitstatus = 1
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            # What the controller uses if this worker's final word (at_exit) never comes.
            if not self.final_path:
                self._close_capture(int(session.exitstatus))
            workeroutput["trace_quit"] = json.dumps({"results": self.results, "late": self.late,
                                                     "other_engines": self.ledger.other_engines,
                                                     "unfrozen": self.unfrozen})

    def _settle(self):
        """Cyclic garbage left by the run is the GC's, not "open at the end"; so is garbage that
        gc.freeze() hid from the collector: unfrozen (then frozen again) to be looked at, once,
        when the tests are over and only while a connection is open
        (tests/integration/test_pytest_plugin_session.py::test_only_the_leaks_are_blamed)."""
        import gc

        collect_while(lambda: self._open_of(None))
        frozen = gc.get_freeze_count()
        if frozen and self._open_of(None):
            self.unfrozen = frozen
            gc.unfreeze()
            try:
                collect_while(lambda: self._open_of(None))
            finally:
                gc.freeze()
        self.drain()

    def pytest_terminal_summary(self, terminalreporter):
        if self.results is not None:
            still = 0 if self.worker else len(self.ledger.conns)  # a worker's: the controller says
            write_summary(terminalreporter, self.results, self.late, self.ledger.other_engines, self.unfrozen, still)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config):
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None
        if self.session is not None:
            self.status = int(self.session.exitstatus)
        if self.channel is None or self not in _ACTIVE:
            self._finish(self.status)
        else:
            self._boundary("", "exit")  # what closes from here on, the exit handlers closed

    def at_exit(self):
        """After the program's exit handlers: what is open now is open at the end; the exit
        status follows this final state (os._exit when it differs from what pytest returned)."""
        status = final = self.status
        try:
            if self.channel is None:
                return
            collect_while(lambda: self._open_of(None))
            self.drain()
            with self._lock:
                late = self.ledger.late_leaks(self.fail, self.reported)
                after = collections.Counter(r["cause"] for r in self.ledger.ended if id(r) in self.open_at_summary)
                still = len(self.ledger.conns)
                self.ledger.close_open()
                if self.final_path:  # an xdist worker: its controller decides, after the workers exited
                    _write_final(self.final_path, {
                        "results": self.ledger.results(), "late": [(n, leak_detail(r)) for n, r in late],
                        "other_engines": self.ledger.other_engines, "unfrozen": self.unfrozen,
                        "after_exit": dict(after)})
                    return
            if self.pytest_status == 0 and status in (0, 1) and self.fail:
                final = 1 if late else 0
            if sum(after.values()):
                sys.stderr.write("trace-quit: the exit handlers closed %d connection(s) the summary counted as "
                                 "open_at_end (%s); %d still open at exit\n" % (
                                     sum(after.values()), ", ".join("%s %d" % kv for kv in sorted(after.items())),
                                     still))
            if final != status:
                sys.stderr.write("trace-quit: exit status %d, not %d: %s\n" % (
                    final, status, "no leak left (--trace-quit-fail)" if final == 0 else
                    "%d leak(s) found at exit (--trace-quit-fail)" % len(late)))
        except Exception:
            final = status
        finally:
            self._finish(final)
        if final != status:
            _exit_now(final)

    def _finish(self, status):
        """The books are closed: the capture finished, the agent stopped, the channel closed."""
        self._stop.set()
        if self.channel is not None:
            self.drain()
        self._close_capture(status)
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


def _write_final(path, doc):
    """A worker's final word, in its controller's private directory (created 0700, the file new)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)


def _exit_now(status):
    """End the process with ``status`` from the last exit handler (the exit code is fixed before
    atexit runs): the streams and logging are flushed first; finalisation has nothing of ours left."""
    import logging

    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(status)
