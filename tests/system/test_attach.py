"""trace-quit --pid on a running service: the agent injected, full attribution, then removed.

The service (attach_service.py) runs untraced under a steady loopback load; the test attaches,
drives the leaking endpoint inside the window, ends trace-quit with Ctrl-C and checks:

* the report's COM_QUITs against the server's general log for the window (every one by the GC,
  the Engines named at the service's create_engine() line), 0 failed requests;
* a second injection inspecting the service: gc.callbacks, the wrapped methods, the meta path,
  the threads and the fds are exactly what they were before attach; uprobe_events unchanged;
* the pause the program itself felt (a 1 ms heartbeat thread's longest stall) is printed with
  ``-s``; tests/system/test_attach.py's figures are docs/performance.md's.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from tq_support import REPO, TRACE_QUIT, cpython_param, load_events, venv_python_for

from trace_quit.tracer.attach import target as target_mod
from trace_quit.tracer.attach.errors import EX_NOT_PYTHON, EX_OWN_TRACER, EX_STOPPED, EX_ZOMBIE
from trace_quit.tracer.attach.inject import inject

pytestmark = [pytest.mark.bpf, pytest.mark.root, pytest.mark.server, pytest.mark.slow]

SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attach_service.py")
UPROBE_EVENTS = "/sys/kernel/tracing/uprobe_events"
LEAKS = 30
PYTHONS = {"debian": os.path.join(REPO, ".venv", "bin", "python"),
           "3.8": venv_python_for("3.8"), "3.13": venv_python_for("3.13"), "3.15": venv_python_for("3.15")}


def _leak_line():
    with open(SERVICE) as f:
        for number, line in enumerate(f, 1):
            if "LEAK-SITE" in line:
                return number
    raise AssertionError("no LEAK-SITE line in attach_service.py")


class Service:
    """attach_service.py in its own process, and a load generator hitting /ok all along."""

    def __init__(self, python, dsn, tmp_path, extra_args=()):
        port_file = str(tmp_path / "port")
        self.proc = subprocess.Popen([python, SERVICE, dsn, port_file] + list(extra_args), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.ok = self.failed = 0
        self.errors = []
        self.stop_load = threading.Event()
        self.load_threads = [threading.Thread(target=self._load, daemon=True) for _ in range(2)]

    def get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=30) as r:
            assert r.status == 200
            return r.read().decode()

    def _load(self):
        while not self.stop_load.is_set():
            try:
                assert self.get("/ok") == "2"
                self.ok += 1
            except Exception as exc:  # every failure counts; the test asserts there are none
                self.failed += 1
                self.errors.append(repr(exc))
            time.sleep(0.005)

    def start_load(self):
        for t in self.load_threads:
            t.start()

    def end_load(self):
        self.stop_load.set()
        for t in self.load_threads:
            t.join(30)

    def stderr_so_far(self):
        """What the service wrote to stderr until now (a handler's traceback), without waiting."""
        try:
            os.set_blocking(self.proc.stderr.fileno(), False)
            return (self.proc.stderr.read() or b"").decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""

    def close(self):
        self.stop_load.set()
        self.proc.kill()
        self.proc.wait()


def inspect(pid):
    """A second injection: what the service's interpreter holds now (tracer/agent/attach.inspect)."""
    return inject(target_mod.check(pid), "inspect", "", 10.0)["inspect"]


def uprobe_events():
    try:
        with open(UPROBE_EVENTS) as f:
            return f.read()
    except OSError:
        return None


def wait_for(path, needle, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and needle in open(path, "rb").read():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("%r never appeared in %s" % (needle, path))


def attach(pid, capture, *extra):
    return subprocess.Popen(TRACE_QUIT + ["--pid", str(pid), "--quiet", "--format", "none", "-o", capture]
                            + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("which", [w if w == "debian" else cpython_param(w) for w in sorted(PYTHONS)])
def test_attach_to_a_running_service_and_leave_it_as_it_was(which, bpf_server, tmp_path):
    python = PYTHONS[which]
    assert os.path.exists(python), "%s is missing: run scripts/setup.sh" % python
    probes_before = uprobe_events()
    service = Service(python, bpf_server.dsn_tcp, tmp_path)
    try:
        service.start_load()
        time.sleep(0.5)
        before = inspect(service.proc.pid)
        assert not before["agent_running"] and not before["trace_quit_fds"]
        service.get("/gap")
        time.sleep(3)
        baseline_ms = float(service.get("/gap"))  # the same load, no injection: the noise floor

        capture = str(tmp_path / "attach.tqcap")
        tracer = attach(service.proc.pid, capture, "--duration", "10m")
        wait_for(capture, b"agent injected into process %d" % service.proc.pid, tracer)
        attach_pause_ms = float(service.get("/gap"))

        log_from = bpf_server.general_log_size()
        for _ in range(LEAKS):
            assert service.get("/leak") == "1"
        deadline = time.monotonic() + 30
        while True:  # until every leaked Engine's cycle is collected and the server logged its Quit
            service.get("/collect")
            time.sleep(0.3)  # the server's log write (the agent writes at detach at the latest)
            log = bpf_server.general_log(log_from)
            quits_in_window = sum(1 for _, command, _ in log if command == "Quit")
            connects_in_window = sum(1 for _, command, _ in log if command == "Connect")
            if quits_in_window >= LEAKS or time.monotonic() > deadline:
                break

        service.get("/gap")
        os.killpg(tracer.pid, signal.SIGINT)  # Ctrl-C: detach
        _, err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, err
        detach_pause_ms = float(service.get("/gap"))
        after = inspect(service.proc.pid)

        time.sleep(0.5)
        service.end_load()
        assert service.failed == 0, (service.errors[:3], service.stderr_so_far())
        assert service.ok > 50
    finally:
        service.close()

    # The general log is the truth for the window: one connection and one COM_QUIT per leak.
    assert connects_in_window == LEAKS and quits_in_window == LEAKS
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    by_cause = report["com_quit"]["by_cause"]
    assert by_cause["gc"] == LEAKS and report["com_quit"]["wire"]["confirmed"] == LEAKS, report["com_quit"]
    assert sum(n for cause, n in by_cause.items() if cause not in ("gc", "never_closed")) == 0
    # never_closed: the shared pool's connections, still open when the trace ended.
    site = "attach_service.py:%d in leaky_query" % _leak_line()
    leaky = [e for e in report["engines"] if e["call_site"].endswith(site)]
    assert len(leaky) == 1 and leaky[0]["created"] == LEAKS and leaky[0]["connections_by_cause"] == {"gc": LEAKS}
    shared = [e for e in report["engines"] if e["call_site"] == "before attach"]
    assert len(shared) == 1 and shared[0]["created"] == 1
    start = [e for e in load_events(capture).events if e.get("k") == "agent_start"]
    assert len(start) == 1 and start[0]["attached"] is True and len(start[0]["gc_counts"]) == 3

    # Detach left the service as it was.
    assert after == before
    assert uprobe_events() == probes_before
    sys.stderr.write("\n[%s] longest stall felt by the service: attach %.1f ms, detach %.1f ms; "
                     "3 s without injection %.1f ms\n" % (which, attach_pause_ms, detach_pause_ms, baseline_ms))
    assert attach_pause_ms < 1000 and detach_pause_ms < 1000


def test_second_attach_after_detach(bpf_server, tmp_path):
    service = Service(PYTHONS["debian"], bpf_server.dsn_tcp, tmp_path)
    try:
        before = inspect(service.proc.pid)
        for n in range(2):
            capture = str(tmp_path / ("attach%d.tqcap" % n))
            tracer = attach(service.proc.pid, capture, "--duration", "2")
            _, err = tracer.communicate(timeout=120)
            assert tracer.returncode == 0, err
            starts = [e for e in load_events(capture).events if e.get("k") == "agent_start"]
            assert len(starts) == 1 and starts[0]["pid"] == service.proc.pid
            assert inspect(service.proc.pid) == before
    finally:
        service.close()


# --- bad pids: one line, a distinct exit code each -------------------------------------------

def _one_line(result, code, words):
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and re.search(words, result.stderr), result.stderr


def test_pid_not_python(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = subprocess.run(TRACE_QUIT + ["--pid", str(sleeper.pid), "-o", str(tmp_path / "x.tqcap")],
                                capture_output=True, text=True, timeout=60)
        _one_line(result, EX_NOT_PYTHON, "not a Python program")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pid_zombie(tmp_path):
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while target_mod.proc_state(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)  # exited, not yet waited for: a zombie
    try:
        result = subprocess.run(TRACE_QUIT + ["--pid", str(child.pid), "-o", str(tmp_path / "x.tqcap")],
                                capture_output=True, text=True, timeout=60)
        _one_line(result, EX_ZOMBIE, "zombie")
    finally:
        child.wait()


def test_pid_stopped(tmp_path):
    sleeper = subprocess.Popen([PYTHONS["debian"], "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        os.kill(sleeper.pid, signal.SIGSTOP)
        result = subprocess.run(TRACE_QUIT + ["--pid", str(sleeper.pid), "-o", str(tmp_path / "x.tqcap")],
                                capture_output=True, text=True, timeout=60)
        _one_line(result, EX_STOPPED, "is stopped")
        assert target_mod.proc_state(sleeper.pid) == "T"  # left as the user left it
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pid_of_trace_quit_itself(tmp_path):
    go = tmp_path / "go"
    first = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", str(tmp_path / "a.tqcap"),
                                           "--", sys.executable, "-c",
                                           "import os, time\nwhile not os.path.exists(%r): time.sleep(0.05)" % str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        result = subprocess.run(TRACE_QUIT + ["--pid", str(first.pid), "-o", str(tmp_path / "x.tqcap")],
                                capture_output=True, text=True, timeout=60)
        _one_line(result, EX_OWN_TRACER, "trace-quit itself")
    finally:
        go.write_text("")
        first.wait(60)


# --- a pre-forking service: the master's existing workers and the ones it forks later ---------

PREFORK = r'''
import os, sys, time, MySQLdb
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
flags = sys.argv[2]
def flag(name):
    return os.path.exists(os.path.join(flags, name))
def worker():
    while not flag("stop"):
        if flag("go"):
            c = MySQLdb.connect(**kw)
            del c                    # refcount: one COM_QUIT per loop
        time.sleep(0.05)
    os._exit(0)
def fork():
    pid = os.fork()
    if pid == 0:
        worker()
    return pid
workers = [fork(), fork()]
while not flag("stop"):
    if flag("fork") and len(workers) == 2:
        workers.append(fork())   # after attach: inherits the agent, the kernel follows the fork
    time.sleep(0.05)
for pid in workers:
    os.waitpid(pid, 0)
'''


def test_attach_to_a_master_traces_existing_and_later_workers(bpf_server, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "prefork.py"
    script.write_text(PREFORK)
    master = subprocess.Popen([PYTHONS["debian"], str(script), bpf_server.dsn_socket, str(flags)])
    try:
        deadline = time.monotonic() + 30
        while len(target_mod.descendants(master.pid)) < 2:
            assert time.monotonic() < deadline and master.poll() is None
            time.sleep(0.05)
        existing = set(target_mod.descendants(master.pid))
        capture = str(tmp_path / "tree.tqcap")
        tracer = attach(master.pid, capture)
        for pid in [master.pid] + sorted(existing):
            wait_for(capture, b"agent injected into process %d" % pid, tracer)
        (flags / "fork").write_text("")
        deadline = time.monotonic() + 30
        while len(target_mod.descendants(master.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        later = set(target_mod.descendants(master.pid)) - existing
        (flags / "go").write_text("")
        time.sleep(2)
        (flags / "go").unlink()
        time.sleep(0.5)
        os.killpg(tracer.pid, signal.SIGINT)
        _, err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, err
        for pid in [master.pid] + sorted(existing | later):
            state = inspect(pid)
            assert not state["agent_running"] and not state["gc_callbacks"] and not state["trace_quit_fds"], pid
    finally:
        (flags / "stop").write_text("")
        master.wait(30)
    events = load_events(capture).events
    workers = existing | later
    starts = {e["pid"]: e for e in events if e.get("k") == "agent_start"}
    assert set(starts) == {master.pid} | workers
    assert [starts[pid].get("forked_from") for pid in sorted(later)] == [master.pid]
    opened = {e["pid"] for e in events if e.get("k") == "conn_open" and not e.get("before_attach")}
    closed_in_kernel = {e["pid"] for e in events if e.get("k") == "bpf_close"}
    assert opened == workers and closed_in_kernel == workers
    destroyed = [e for e in events if e.get("k") == "conn_destroy"]
    assert destroyed and {e["cause"] for e in destroyed} == {"refcount"}


# --- an injection that cannot happen never leaves the program stopped or harmed -----------------

BLOCKED = r'''
import os, sys, threading, time
flag = sys.argv[1]
def worker():
    while not os.path.exists(flag):
        time.sleep(0.01)
t = threading.Thread(target=worker)
t.start()
t.join()                      # the main thread runs no Python until the flag: the call waits
time.sleep(0.2)               # a queued call (cancelled) runs around here: it must change nothing
open(flag + ".done", "w").write("ok")
'''


def _blocked(tmp_path):
    flag = tmp_path / "flag"
    (tmp_path / "blocked.py").write_text(BLOCKED)
    proc = subprocess.Popen([PYTHONS["debian"], str(tmp_path / "blocked.py"), str(flag)], stderr=subprocess.PIPE)
    time.sleep(0.5)
    return proc, flag


def _still_runs_and_finishes(proc, flag):
    assert target_mod.proc_state(proc.pid) in ("R", "S")  # not T: not left stopped
    assert _tracer_pid(proc.pid) == 0                     # not left traced
    flag.write_text("")
    assert proc.wait(30) == 0, proc.stderr.read()
    assert proc.stderr.read() == b""                     # no traceback, no SystemError
    assert (flag.parent / "flag.done").read_text() == "ok"


def _tracer_pid(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


@pytest.mark.root
def test_inject_timeout_leaves_the_program_running(tmp_path):
    from trace_quit.tracer.attach.errors import InjectError

    proc, flag = _blocked(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(InjectError, match="ran no Python within 1s"):
            inject(target_mod.check(proc.pid), "inspect", "", 1.0)
        assert time.monotonic() - t0 < 5
        _still_runs_and_finishes(proc, flag)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.root
def test_tracer_interrupted_mid_injection_leaves_the_program_running(tmp_path):
    """Ctrl-C while waiting for the main thread: the queued call is cancelled, the program untouched."""
    proc, flag = _blocked(tmp_path)
    driver = subprocess.Popen([sys.executable, "-c",
                               "import sys\n"
                               "from trace_quit.tracer.attach import target, inject\n"
                               "print('queued', flush=True)\n"
                               "inject.inject(target.check(int(sys.argv[1])), 'inspect', '', 60.0)\n",
                               str(proc.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline() == "queued\n"
        time.sleep(1.5)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=30)
        assert "KeyboardInterrupt" in err
        _still_runs_and_finishes(proc, flag)
    finally:
        proc.kill()
        proc.wait()


SIGNALLED = r'''
import os, signal, sys, time
flag = sys.argv[1]
acks = os.open(flag + ".acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
signal.signal(signal.SIGURG, lambda signum, frame: os.write(acks, b"x"))  # one byte per signal handled
open(flag + ".ready", "w").close()
while not os.path.exists(flag):
    time.sleep(0.002)
'''


@pytest.mark.root
def test_the_programs_own_signals_reach_it_through_injections(tmp_path):
    """SIGURG sent all through ten injections: every one reaches the program's handler.

    One signal at a time, the next once the handler acknowledged it: two SIGURGs pending at once
    would merge into one by the kernel's rule for standard signals, whoever holds the thread. A
    signal an injection swallowed (a signal-delivery stop continued without it) is never acknowledged."""
    flag = tmp_path / "flag"
    acks = tmp_path / "flag.acks"
    (tmp_path / "signalled.py").write_text(SIGNALLED)
    proc = subprocess.Popen([PYTHONS["debian"], str(tmp_path / "signalled.py"), str(flag)])
    try:
        while not (tmp_path / "flag.ready").exists():
            time.sleep(0.02)
        sent = []
        unacknowledged = []
        stop = threading.Event()

        def send():
            while not stop.is_set():
                os.kill(proc.pid, signal.SIGURG)
                sent.append(1)
                deadline = time.monotonic() + 10
                while acks.stat().st_size < len(sent):
                    if time.monotonic() > deadline:
                        unacknowledged.append(len(sent))
                        return
                    time.sleep(0.001)
        sender = threading.Thread(target=send)
        sender.start()
        try:
            for _ in range(10):
                inject(target_mod.check(proc.pid), "inspect", "", 10.0)
            while len(sent) < 30 and sender.is_alive():
                time.sleep(0.02)
        finally:
            stop.set()
            sender.join()
        flag.write_text("")
        assert proc.wait(30) == 0
        assert not unacknowledged, "signal %d never reached the handler" % unacknowledged[0]
        assert acks.stat().st_size == len(sent) >= 30, len(sent)
        sys.stderr.write("%d signals through 10 injections\n" % len(sent))
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.root
def test_a_target_dying_during_injection_is_said_with_its_signal(tmp_path):
    """Never "exited": the signal it died of, from the kernel (tracer/attach/deathwatch.py)."""
    from trace_quit.tracer.attach import deathwatch
    from trace_quit.tracer.attach.errors import TargetDied

    proc, flag = _blocked(tmp_path)
    deathwatch.watch(proc.pid)
    try:
        threading.Timer(1.0, os.kill, (proc.pid, signal.SIGSEGV)).start()
        with pytest.raises(TargetDied, match="process %d died of SIGSEGV during injection" % proc.pid):
            inject(target_mod.check(proc.pid), "inspect", "", 20.0)
    finally:
        deathwatch.unwatch(proc.pid)
        proc.kill()
        proc.wait()


# --- PyMySQL connections open before attach ----------------------------------------------------

PYMYSQL_BEFORE = r'''
import os, sys, time, pymysql
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
flags = sys.argv[2]
def flag(name):
    return os.path.exists(os.path.join(flags, name))
closed_later = pymysql.connect(**kw)    # open before attach, close() after: a COM_QUIT
dropped_later = pymysql.connect(**kw)   # open before attach, its last reference dropped after: none
open(os.path.join(flags, "ready"), "w").close()
while not flag("go"):
    time.sleep(0.05)
closed_later.close()
del dropped_later
open(os.path.join(flags, "done"), "w").close()
while not flag("stop"):
    time.sleep(0.05)
'''


def test_pymysql_connections_open_before_attach_are_attributed(bpf_server, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "before.py"
    script.write_text(PYMYSQL_BEFORE)
    program = subprocess.Popen([PYTHONS["debian"], str(script), bpf_server.dsn_tcp, str(flags)])
    try:
        deadline = time.monotonic() + 30
        while not (flags / "ready").exists():
            assert time.monotonic() < deadline and program.poll() is None
            time.sleep(0.05)
        log_from = bpf_server.general_log_size()
        capture = str(tmp_path / "before.tqcap")
        tracer = attach(program.pid, capture)
        wait_for(capture, b"agent injected into process %d" % program.pid, tracer)
        (flags / "go").write_text("")
        deadline = time.monotonic() + 30
        while not (flags / "done").exists():
            assert time.monotonic() < deadline and program.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(tracer.pid, signal.SIGINT)
        _, err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, err
    finally:
        (flags / "stop").write_text("")
        program.wait(30)
    log = bpf_server.general_log(log_from)
    assert [command for _, command, _ in log if command in ("Connect", "Quit")] == ["Quit"]
    opens = [e for e in load_events(capture).events if e.get("k") == "conn_open"]
    assert len(opens) == 2 and all(e["driver"] == "pymysql" and e["before_attach"] for e in opens)
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    quits = sorted((q["cause"], q.get("origin")) for q in report["quits"])
    assert quits == [("explicit_close", "before attach"), ("refcount", "before attach")]
    assert {c: n for c, n in report["com_quit"]["by_cause"].items() if n} == {"explicit_close": 1, "refcount": 1}
    assert report["no_quit"]["without_quit"] == 1   # PyMySQL's destructor sends no COM_QUIT
