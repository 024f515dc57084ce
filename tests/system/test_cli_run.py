"""`trace-quit -- CMD` as a user runs it: root, eBPF and the agent, a real server."""

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time

import pytest

from tq_support import KNOWN_CAUSES_TOTAL, TRACE_QUIT, kinds, load_events, report_json, run_traced

pytestmark = [pytest.mark.bpf, pytest.mark.server]

NOBODY = pwd.getpwnam("nobody")


def test_exit_status_is_the_programs(tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", "import sys; sys.exit(7)"], bpf=True)
    assert proc.returncode == 7, proc.stderr
    cap = load_events(capture)
    assert cap.trailer["exit_status"] == 7
    assert cap.header["layers"]["bpf"] is True


def test_child_killed_by_sigterm_gives_143(tmp_path):
    proc, capture = run_traced(
        tmp_path, [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], bpf=True)
    assert proc.returncode == 143
    assert load_events(capture).trailer["exit_status"] == 143


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_to_the_tracer_stops_the_child_and_writes_the_trailer(sig, tmp_path):
    capture = str(tmp_path / "int.tqcap")
    ready = tmp_path / "ready"
    prog = "import time, pathlib; pathlib.Path(%r).write_text('x'); time.sleep(60)" % str(ready)
    tracer = subprocess.Popen(TRACE_QUIT + ["--quiet", "-o", capture, "--",
                                            sys.executable, "-c", prog],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the traced program never started"
    tracer.send_signal(sig)
    _, err = tracer.communicate(timeout=30)
    assert tracer.returncode == 128 + sig  # forwarded; Python 3.8+ dies of an unhandled SIGINT too
    cap = load_events(capture)
    assert cap.status == "complete", err
    assert cap.trailer["exit_status"] == tracer.returncode
    assert b"capture written to" in err and b"COM_QUIT BY CAUSE" in err  # and the report was produced


#: Counts the SIGINTs delivered to it -- the wakeup fd gets a byte per delivery, where the
#: Python-level handler would run once for two close together --; after the first it waits a
#: second for another, writes the count and exits 0.
COUNT_SIGINTS = """
import os, pathlib, signal, sys, time
r, w = os.pipe()
os.set_blocking(w, False)
signal.signal(signal.SIGINT, lambda *a: None)
signal.set_wakeup_fd(w)
pathlib.Path(sys.argv[1]).write_text("ready")
got = b""
os.set_blocking(r, False)
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
    try:
        got += os.read(r, 64)
    except BlockingIOError:
        pass
time.sleep(1.0)
try:
    got += os.read(r, 64)
except BlockingIOError:
    pass
pathlib.Path(sys.argv[2]).write_text(str(got.count(signal.SIGINT)))
"""


@pytest.mark.parametrize("to", ["group", "tracer"])
def test_a_sigint_reaches_the_program_once(to, tmp_path):
    # No terminal: `kill -INT -PGID` (a supervisor stopping a service) reaches the program
    # directly, and trace-quit must not forward its own copy (uvicorn force-exits on a second
    # one, skipping its shutdown); `kill -INT <trace-quit>` reaches only the tracer, which forwards it.
    ready, count = tmp_path / "ready", tmp_path / "count"
    tracer = subprocess.Popen(TRACE_QUIT + ["--quiet", "--format", "none", "-o", str(tmp_path / "g.tqcap"), "--",
                                            sys.executable, "-c", COUNT_SIGINTS, str(ready), str(count)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the traced program never started"
    if to == "group":
        os.killpg(tracer.pid, signal.SIGINT)
    else:
        tracer.send_signal(signal.SIGINT)
    _, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    assert count.read_text() == "1", err
    # Two SIGINTs close together can merge into one pending signal, so the count alone may not
    # show a second copy: the trailer says whether trace-quit sent one.
    signals = load_events(str(tmp_path / "g.tqcap")).trailer["signals"]
    assert signals == [{"signal": signal.SIGINT, "name": "SIGINT", "forwarded": to == "tracer"}]


def test_a_process_killed_before_the_agents_exit_flush_is_said(tmp_path):
    # Its queued records are lost without being counted: the report names the process.
    child = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    prog = ("import subprocess, sys; p = subprocess.run([sys.executable, '-c', %r]); "
            "print(p.returncode, flush=True)" % child)
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", prog], bpf=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "-9", proc.stderr
    events = load_events(capture).events
    pids = {e["pid"] for e in events if e["k"] == "agent_start"}
    finals = {e["pid"] for e in events if e["k"] == "gc_counts" and e.get("final")}
    assert len(pids) == 2 and len(finals) == 1
    report = report_json(capture, tmp_path)
    (killed,) = pids - finals
    said = [f for f in report["findings"] if f["title"].startswith("the agent's last records")]
    assert len(said) == 1 and "Pids: %d." % killed in said[0]["evidence"], report["findings"]


def test_child_runs_as_the_sudo_user_and_owns_a_private_capture(tmp_path):
    os.chmod(tmp_path, 0o777)
    env = dict(os.environ, SUDO_UID=str(NOBODY.pw_uid), SUDO_GID=str(NOBODY.pw_gid), SUDO_USER="nobody")
    prog = "import os, json; print(json.dumps([os.getuid(), os.getgid(), sorted(os.getgroups()), os.environ['HOME']]))"
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", prog], bpf=True, env=env)
    assert proc.returncode == 0, proc.stderr
    uid, gid, groups, home = json.loads(proc.stdout)
    assert (uid, gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert groups == sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    assert home == NOBODY.pw_dir
    st = os.stat(capture)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)


def test_as_root_keeps_root(tmp_path):
    env = dict(os.environ, SUDO_UID=str(NOBODY.pw_uid), SUDO_GID=str(NOBODY.pw_gid))
    proc, _ = run_traced(tmp_path, [sys.executable, "-c", "import os; print(os.getuid())"], bpf=True,
                         env=env, extra=["--as-root"])
    assert proc.returncode == 0 and proc.stdout.strip() == "0"


def test_a_connection_on_the_programs_first_line_is_captured(server, tmp_path):
    prog = tmp_path / "first.py"
    prog.write_text("import MySQLdb; MySQLdb.connect(host='127.0.0.1', port=%d, user=%r, password=%r).close()\n"
                    % (server.port, server.user, server.password))
    proc, capture = run_traced(tmp_path, [sys.executable, str(prog)], bpf=True)
    assert proc.returncode == 0, proc.stderr
    counts = kinds(load_events(capture).events)
    assert counts["bpf_connect"] == 1 and counts["bpf_close"] == 1 and counts["bpf_wire"] == 1
    assert counts["conn_open"] == 1 and counts["conn_close"] == 1
    with open(capture) as f:
        assert server.password not in f.read()


def test_cut_and_garbage_captures_are_read_up_to_the_damage(server, tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_tcp], bpf=True)
    assert proc.returncode == 0, proc.stderr
    data = open(capture, "rb").read()
    lines = data.splitlines(keepends=True)
    cut = tmp_path / "cut.tqcap"
    cut.write_bytes(b"".join(lines[:-1]) + lines[-1][:10])  # the trailer cut mid-line
    garbage = tmp_path / "garbage.tqcap"
    garbage.write_bytes(data + os.urandom(300))
    # A cut-off last line is what a killed writer leaves (truncated); bytes after the trailer are damage.
    for path, status in ((cut, "truncated"), (garbage, "damaged at line %d" % (len(lines) + 1))):
        result = subprocess.run(TRACE_QUIT + ["report", str(path), "--format", "json"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert status in result.stderr
        report = json.loads(result.stdout)
        assert report["connections"]["opened"] == KNOWN_CAUSES_TOTAL
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(os.urandom(4096))
    result = subprocess.run(TRACE_QUIT + ["report", str(rnd)], capture_output=True, text=True)
    assert result.returncode == 65
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_no_password_anywhere_in_a_bpf_capture_or_its_reports(server, tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_tcp], bpf=True)
    assert proc.returncode == 0, proc.stderr
    assert server.password not in open(capture).read()
    assert server.password not in proc.stderr
    for fmt in ("text", "json", "html"):
        out = subprocess.run(TRACE_QUIT + ["report", capture, "--format", fmt], capture_output=True, text=True)
        assert out.returncode == 0 and server.password not in out.stdout + out.stderr
    dump = subprocess.run(TRACE_QUIT + ["dump", capture], capture_output=True, text=True)
    assert dump.returncode == 0 and server.password not in dump.stdout
    assert len(dump.stdout.splitlines()) == len(open(capture).read().splitlines())


@pytest.mark.parametrize("max_capture", [None, "1"])  # "1": every event past the header is counted, not written
def test_pid_attaches_to_a_running_program(server, tmp_path, max_capture):
    go = tmp_path / "go"
    prog = tmp_path / "running.py"
    prog.write_text(
        "import gc, os, sys, time, MySQLdb\n"
        "from trace_quit.workloads import dsn\n"
        "kw = dsn.parse(sys.argv[1])\n"
        "class H:\n"
        "    def __init__(self, c): self.c = c; self.me = self\n"
        "gc.disable()\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
        "for _ in range(5): MySQLdb.connect(**kw).close()\n"
        "for _ in range(3):\n"
        "    c = MySQLdb.connect(**kw); del c\n"
        "for _ in range(2): H(MySQLdb.connect(**kw))\n"
        "gc.collect()\n")
    program = subprocess.Popen([sys.executable, str(prog), server.dsn_socket, str(go)])
    capture = str(tmp_path / "pid.tqcap")
    tracer = subprocess.Popen(TRACE_QUIT + ["--pid", str(program.pid), "--no-agent", "--quiet", "--format", "none",
                               "-o", capture] + (["--max-capture", max_capture] if max_capture else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # attached once the capture holds its start event
        if os.path.exists(capture) and b'"k":"child_start"' in open(capture, "rb").read():
            break
        time.sleep(0.05)
    go.write_text("")
    assert program.wait(timeout=60) == 0
    _, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    assert "no in-process agent" in err
    cap = load_events(capture)
    assert cap.header["attached_pid"] == program.pid and cap.header["layers"]["agent"] is False
    result = subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True, text=True)
    report = json.loads(result.stdout)
    by_cause = report["com_quit"]["by_cause"]
    assert (by_cause["explicit_close"], by_cause["refcount"], by_cause["gc"]) == (5, 3, 2)
    assert report["com_quit"]["wire"]["confirmed"] == 10
    if max_capture:  # --pid honours --max-capture: the kernel's closes counted by cause, none written
        assert "capture reached its 1 byte bound" in err
        assert report["bound"]["closes_after"] == {"explicit_close": 5, "refcount": 3, "gc": 2}
        assert [e for e in cap.events if e["k"] == "bpf_close"] == []
    else:
        assert "bound" not in report and len([e for e in cap.events if e["k"] == "bpf_close"]) == 10


def test_pid_of_no_process_is_one_line(tmp_path):
    result = subprocess.run(TRACE_QUIT + ["--pid", "999999999", "-o", str(tmp_path / "x.tqcap")],
                            capture_output=True, text=True)
    assert result.returncode == 66 and result.stderr.count("\n") == 1 and "no process" in result.stderr


def test_the_program_and_a_relative_capture_keep_the_invoking_cwd_while_bcc_compiles(tmp_path):
    # bcc compiles with the process's cwd in the kernel headers (it chdirs there and back) while
    # the command is resolved, the capture opened and the child forked: none of them may see it.
    project = tmp_path / "project"
    project.mkdir()
    proc = subprocess.run(TRACE_QUIT + ["--quiet", "--format", "none", "--no-agent", "-o", "rel.tqcap", "--",
                                        sys.executable, "-c", "import os; print(os.getcwd())"],
                          cwd=str(project), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(project)
    assert (project / "rel.tqcap").exists()
    assert load_events(str(project / "rel.tqcap")).header["cwd"] == str(project)
