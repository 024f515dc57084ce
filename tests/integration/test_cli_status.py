"""The live status line: on stderr when it is a terminal, never otherwise."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tq_support import TRACE_QUIT

pytestmark = pytest.mark.server

# The connections are opened 60 ms apart: the agent (no thread) writes its buffer at a
# connection event once it is 50 ms old, so three opens in a burst followed by a sleep would
# reach the tracer only at exit (README, Caveats).
PROGRAM = ("import sys, time, MySQLdb; from trace_quit.workloads import dsn; "
           "conns = [(time.sleep(0.06), MySQLdb.connect(**dsn.parse(sys.argv[1])))[1] for _ in range(3)]; "
           "time.sleep(2.5)")


def _read_all(fd, proc, timeout=60):
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode("utf-8", "replace")


def test_status_line_on_a_terminal(server, tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--format", "none", "-o", str(tmp_path / "s.tqcap"), "--",
                                          sys.executable, "-c", PROGRAM, server.dsn_tcp],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=str(tmp_path))
    os.close(slave)
    text = _read_all(master, proc)
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0
    assert "\r\x1b[2Ktrace-quit" in text          # rewritten in place
    assert "live 3" in text                        # three connections open during the sleep
    assert "lost 0" in text


def test_no_status_line_when_not_a_terminal(server, tmp_path):
    result = subprocess.run(TRACE_QUIT + ["--no-bpf", "--format", "none", "-o", str(tmp_path / "s.tqcap"), "--",
                                          sys.executable, "-c", PROGRAM, server.dsn_tcp],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0
    assert "\x1b[2K" not in result.stderr and "live " not in result.stderr
