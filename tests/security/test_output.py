"""Text the program chose reaches root's terminal as data: thread names, paths, argv with
escape sequences (clear the screen, set the window title, a forged "0 leaks" line) are shown
escaped in the text report and never reach the live status line raw
(docs/security.md: "Output is data").

As a user meets it: ``trace-quit -- python APP > app.log 2>&1`` at a terminal that is the
session's controlling terminal (the status line is drawn there, the report goes to the log),
then ``trace-quit report`` into a pipe.
"""

import fcntl
import os
import pty
import re
import subprocess
import termios

import pytest

from attacker import stop, sudo_env
from tq_support import TRACE_QUIT, VENV_PY, read_terminal

pytestmark = [pytest.mark.server]

HOSTILE = "w\x1b[2J\x1b]0;pwned\x07\x1b[1A\r0 leaks\n\u202e\x9b31m"

PROGRAM = r"""
import gc, sys, threading, time, MySQLdb
from trace_quit.workloads import dsn as dsnlib
kw = dsnlib.parse(sys.argv[1])

class Holder:
    pass

def work():
    for _ in range(3):
        MySQLdb.connect(**kw).close()
    h = Holder()
    h.self, h.conn = h, MySQLdb.connect(**kw)
    del h
    gc.collect()          # a collection on this thread destroys it: the report names the thread

t = threading.Thread(target=work, name=%r)
t.start()
t.join()
time.sleep(1.5)           # the status line is drawn meanwhile
""" % HOSTILE

#: Control characters other than the newline, DEL, C1, and the bidi override.
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")


def test_escape_sequences_from_the_program_stay_data(attacker, shared_tmp, server):
    project = shared_tmp / "proj\x1b[2J"
    project.mkdir(mode=0o777)
    app = project / "app\x1b]0;pwned\x07.py"
    app.write_text(PROGRAM)
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)

    def controlling_terminal():  # a new session; opening the pty makes it the controlling terminal
        os.setsid()
        fd = os.open(slave_name, os.O_RDWR)
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        os.close(fd)

    with open(shared_tmp / "app.log", "wb") as log:
        tracer = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--format", "text", "-o", "run.tqcap", "--", VENV_PY,
                                                os.path.relpath(str(app), str(shared_tmp)), server.dsn_tcp],
                                  cwd=str(shared_tmp), env=sudo_env(attacker, COLUMNS="120"),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  preexec_fn=controlling_terminal)
    try:
        terminal = read_terminal(master, tracer, timeout=120)
        tracer.wait(timeout=60)
    finally:
        stop(tracer)
        os.close(slave)
        os.close(master)
    assert tracer.returncode == 0, (shared_tmp / "app.log").read_text(errors="replace")
    # The status line was drawn, and only its own \r\x1b[2K is control on the terminal.
    assert "\r\x1b[2Ktrace-quit" in terminal
    drawn = terminal.replace("\r\x1b[2K", "").replace("\r\n", "\n")
    assert not _RAW.search(drawn), repr(drawn)
    # The report in the log: the hostile names shown, escaped; nothing raw.
    logged = (shared_tmp / "app.log").read_text(errors="replace")
    assert "\\x1b[2J" in logged and "\\x1b]0;pwned\\x07" in logged
    assert not _RAW.search(logged), repr(logged)
    report = subprocess.run(TRACE_QUIT + ["report", "run.tqcap"], cwd=str(shared_tmp), capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "proj\\x1b[2J/app\\x1b]0;pwned\\x07.py" in report.stdout  # the path, escaped
    assert "\\x9b31m" in report.stdout or "\\x0a" in report.stdout   # the thread's name (as wide as fits)
    assert not _RAW.search(report.stdout), repr(report.stdout)
