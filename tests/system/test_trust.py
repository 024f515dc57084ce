"""The traced program cannot forge, silence or outlive the root tracer's record (issue 12)."""

import json
import os
import pwd
import signal
import subprocess
import sys
import time

import pytest

from tq_support import TRACE_QUIT, load_events, run_traced

pytestmark = [pytest.mark.root]

NOBODY = pwd.getpwnam("nobody")

# An unprivileged program that writes one line of every record kind into the agent's channel
# (found where the agent finds it), plus lines no agent writes, then exits 7.
FORGER = r"""
import json, os, sys
kinds = json.loads(sys.argv[1])
fd = os.open(os.environ["TRACE_QUIT_CHANNEL"], os.O_WRONLY | os.O_NONBLOCK)
me = os.getpid()
def put(line):
    os.write(fd, line + b"\n")
for kind in kinds["other"]:
    # what an attacker would want: a trailer that says exit 0, closes "confirmed on the wire"
    put(json.dumps({"k": kind, "t": 1, "pid": me, "src": "bpf", "exit_status": 0, "status": 0,
                    "conn": 1, "cause": "gc", "gen": 2, "wire": "confirmed", "quit": True}).encode())
for kind in kinds["agent"]:
    put(json.dumps({"k": kind, "t": "not a time", "pid": me}).encode())   # the agent's kinds, invalid
put(json.dumps({"k": "agent_lost", "t": 5, "pid": me, "n": "x"}).encode())  # once killed the reader
put(json.dumps({"format": "trace-quit/capture", "version": 1, "argv": ["forged"], "pid": me}).encode())
put(b"not json at all")
put(b"[1, 2, 3]")
os.close(fd)
sys.exit(7)
"""


def _kinds():
    from trace_quit.tracer import events as ev

    other = sorted({v for name, v in vars(ev).items() if name.startswith("BPF_") and isinstance(v, str)}
                   | {ev.SERVER_COUNT, ev.CHILD_START, ev.CHILD_EXIT, ev.TRACER_NOTE, ev.TRAILER})
    return {"other": other, "agent": sorted(ev.AGENT_KINDS)}


@pytest.mark.bpf
def test_forged_channel_lines_change_nothing_the_tracer_wrote_and_are_counted(tmp_path):
    kinds = _kinds()
    os.chmod(tmp_path, 0o777)
    env = dict(os.environ, SUDO_UID=str(NOBODY.pw_uid), SUDO_GID=str(NOBODY.pw_gid), SUDO_USER="nobody")
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", FORGER, json.dumps(kinds)], bpf=True, env=env)
    assert proc.returncode == 7, proc.stderr

    with open(capture) as f:
        lines = [json.loads(line) for line in f]
    header, body, trailer = lines[0], lines[1:-1], lines[-1]
    child = header["child_pid"]
    expected_rejected = len(kinds["other"]) + len(kinds["agent"]) + 1 + 1  # + agent_lost "x" + header-like
    unnamed = 2  # not JSON, not an object
    # The header and trailer are the tracer's: one each, first and last, exit status the program's.
    assert header["format"] == "trace-quit/capture" and header["argv"][:2] == [sys.executable, "-c"]
    assert not any("format" in r for r in body)
    assert [r.get("k") for r in lines].count("trailer") == 1 and trailer["k"] == "trailer"
    assert trailer["exit_status"] == 7
    assert trailer["rejected"]["by_pid"] == {str(child): expected_rejected, "?": unnamed}
    assert trailer["rejected"]["total"] == expected_rejected + unnamed
    # Nothing forged entered: the agent channel's records are agent kinds only, valid ones.
    from trace_quit.tracer import events as ev

    agent_records = [r for r in body if r.get("src") == "agent"]
    assert {r["k"] for r in agent_records} <= ev.AGENT_KINDS
    assert all(isinstance(r["t"], int) for r in agent_records)
    assert not [r for r in agent_records if r["k"] == "agent_lost"]
    # The kernel records are the kernel's: no connection was made, so none closed.
    assert [r["k"] for r in body if r["k"] in ("bpf_close", "bpf_close_ret", "bpf_connect", "bpf_wire")] == []
    assert [(r["k"], r.get("status")) for r in body if r["k"] in ("child_start", "child_exit")] == \
        [("child_start", None), ("child_exit", 7)]
    assert all(r["src"] in ("bpf", "tracer") for r in body if r["k"].startswith("bpf_"))
    # The report says how many lines were rejected and from which process.
    total = expected_rejected + unnamed
    assert "%d lines were rejected" % total in proc.stderr and "pid %d: %d" % (child, expected_rejected) in proc.stderr
    report = subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    parsed = json.loads(report.stdout)
    assert any("%d lines were rejected" % total in n["text"] for n in parsed["notes"])
    assert load_events(capture).status == "complete"


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_attaching_never_starts_the_program(sig, tmp_path):
    """Sent while the probes compile/attach: not run, trailer says so, no FIFO dir left, 128+N."""
    capture = tmp_path / "sig.tqcap"
    marker = tmp_path / "ran"
    private_tmp = tmp_path / "tmp"  # the channel's directory is made here (TMPDIR)
    private_tmp.mkdir()
    tracer = subprocess.Popen(TRACE_QUIT + ["--quiet", "-o", str(capture), "--", sys.executable, "-c",
                                            "open(%r, 'w').close()" % str(marker)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, TMPDIR=str(private_tmp)), start_new_session=True)
    deadline = time.monotonic() + 60
    # The header is on disk before compiling starts; child_start only after attaching ends.
    while not (capture.exists() and capture.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert b"child_start" not in capture.read_bytes(), "too late: attaching was already over"
    tracer.send_signal(sig)
    _, err = tracer.communicate(timeout=60)
    time.sleep(0.5)  # a released child would have created the marker by now
    assert tracer.returncode == 128 + sig, err
    assert not marker.exists()
    assert os.listdir(private_tmp) == []
    cap = load_events(capture)
    assert cap.status == "complete"
    assert cap.trailer["exit_status"] == 128 + sig
    assert cap.trailer["interrupted"] == {"signal": int(sig), "name": sig.name, "program_started": False}
    assert [e["k"] for e in cap.events if e["k"] in ("child_start", "child_exit")] == []
    assert err.decode().count("\n") <= 2 and b"Traceback" not in err
    assert ("interrupted by %s while starting: the program was not run" % sig.name).encode() in err


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs of this test's own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("not root (mounting a tmpfs needs root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_loses_the_capture_not_the_exit_status(small_disk, tmp_path):
    """It exited 70 ("internal error"); now the program's 3 and one line saying what was lost."""
    capture = small_disk / "x.tqcap"
    program = "import gc\nfor _ in range(6000): gc.collect(1)\nraise SystemExit(3)\n"
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", str(capture), "--",
                                        sys.executable, "-c", program],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trace-quit: the capture %s could not be written (No space left on device): " % capture)
    assert lines[0].endswith(" events and its trailer were lost; what is in it is cut short; "
                             "the program's exit status follows")
    lost = int(lines[0].split("): ")[1].split(" ")[0])
    assert lost > 0
    assert load_events(capture).status == "truncated"


@pytest.mark.bpf
def test_sigterm_while_attaching_to_a_pid_still_ends_with_a_trailer(tmp_path):
    """--pid: a SIGTERM during compile/attach used to kill the tracer and leave a header-only capture."""
    program = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    capture = tmp_path / "pid.tqcap"
    try:
        tracer = subprocess.Popen(TRACE_QUIT + ["--pid", str(program.pid), "--quiet", "--format", "none",
                                                "-o", str(capture)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (capture.exists() and capture.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert b"child_start" not in capture.read_bytes(), "too late: attaching was already over"
        tracer.send_signal(signal.SIGTERM)
        _, err = tracer.communicate(timeout=60)
        assert tracer.returncode == 0, err
        assert load_events(capture).status == "complete"
        assert program.poll() is None  # the traced process is not ours to stop
    finally:
        program.kill()
        program.wait()
