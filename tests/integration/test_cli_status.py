"""The live status line: on stderr when it is a terminal, never otherwise."""

import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest

from tq_support import TRACE_QUIT, read_terminal

pytestmark = pytest.mark.server

# The connections are opened 60 ms apart: the agent (no thread) writes its buffer at a
# connection event once it is 50 ms old, so three opens in a burst followed by a sleep would
# reach the tracer only at exit (README, Caveats).
PROGRAM = ("import sys, time, MySQLdb; from trace_quit.workloads import dsn; "
           "conns = [(time.sleep(0.06), MySQLdb.connect(**dsn.parse(sys.argv[1])))[1] for _ in range(3)]; "
           "time.sleep(2.5)")


def test_status_line_on_a_terminal_the_program_does_not_share(server, tmp_path):
    """`trace-quit -- app > log 2>&1` at a terminal: the live line goes to the terminal (/dev/tty)."""
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)

    def controlling_terminal():  # a new session whose controlling terminal is the pty
        os.setsid()
        os.close(os.open(slave_name, os.O_RDWR))

    with open(tmp_path / "program.log", "w") as log:
        proc = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--format", "none", "-o", str(tmp_path / "s.tqcap"), "--",
                                              sys.executable, "-c", PROGRAM, server.dsn_tcp],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(tmp_path),
                                preexec_fn=controlling_terminal)
    text = read_terminal(master, proc)  # our slave fd stays open: the pty never hangs up under the reader
    proc.wait(timeout=30)
    os.close(slave)
    os.close(master)
    assert proc.returncode == 0
    assert "\r\x1b[2Ktrace-quit" in text          # rewritten in place
    assert "live 3" in text                        # three connections open during the sleep
    assert "lost 0" in text
    assert re.search(r"collections gen0 \d+ gen1 \d+ gen2 \d+", text)  # each number says what it counts
    assert "\x1b[2K" not in (tmp_path / "program.log").read_text()  # nothing drawn where the program writes


# /dev/tty opens: the program (and trace-quit) really has a controlling terminal.
PROMPT = ("import os, sys, time, MySQLdb; from trace_quit.workloads import dsn; os.close(os.open('/dev/tty', 0)); "
          "conns = [MySQLdb.connect(**dsn.parse(sys.argv[1])) for _ in range(3)]; time.sleep(1.2); "
          "name = input('name? '); time.sleep(1.2); print('hello', name)")


def test_an_interactive_prompt_on_the_shared_terminal_is_never_erased(server, tmp_path):
    """The line was drawn with \\r\\x1b[2K every 0.5 s over the program's prompt and the typed answer.

    As a user meets it: the pty is the session's controlling terminal (/dev/tty opens), and
    also fds 0-2 of trace-quit and the program. Without a controlling terminal this test
    passed even when the check compared /dev/tty's own device number with the pts'."""
    master, slave = pty.openpty()

    def controlling_terminal():  # a new session, the pty (its fd 0 here) its controlling terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--format", "none", "-o", str(tmp_path / "s.tqcap"), "--",
                                          sys.executable, "-c", PROMPT, server.dsn_tcp],
                            stdin=slave, stdout=slave, stderr=slave, cwd=str(tmp_path),
                            preexec_fn=controlling_terminal)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"name? " not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
    time.sleep(1.0)  # the old line would have been redrawn twice over the prompt by now
    os.write(master, b"bob\n")
    text = seen.decode("utf-8", "replace") + read_terminal(master, proc)
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0
    assert "\x1b[2K" not in text and "\r\x1b" not in text
    assert text.startswith("name? bob\r\nhello bob\r\n\r\ntrace-quit: capture written")  # byte for byte


def test_no_status_line_when_not_a_terminal(server, tmp_path):
    result = subprocess.run(TRACE_QUIT + ["--no-bpf", "--format", "none", "-o", str(tmp_path / "s.tqcap"), "--",
                                          sys.executable, "-c", PROGRAM, server.dsn_tcp],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0
    assert "\x1b[2K" not in result.stderr and "live " not in result.stderr
