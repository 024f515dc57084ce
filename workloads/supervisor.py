"""The disposable server's supervisor: kills its server and removes its directory when the owner goes.

Run as ``python -I supervisor.py TMPDIR STOP_TIMEOUT_S`` (workloads/server.py) with the
owner's pipe on stdin. The owner writes "pid N" lines for each server process it starts; on
EOF (owner gone or stop()) every listed process still running *with TMPDIR in its command
line* (so a recycled pid is never hit) gets SIGTERM, then SIGKILL, and TMPDIR is removed.
Stdlib only; it imports nothing of trace_quit (-I: not even the working directory).
"""

import os
import shutil
import signal
import sys
import time


class Done(Exception):
    """SIGTERM: stop reading, clean up now."""


def on_term(signum, frame):
    raise Done()


def ours(tmpdir, pid):
    """``pid`` is alive (not a zombie) and has ``tmpdir`` in its command line."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if tmpdir.encode() not in f.read():
                return False
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(tmpdir, pids, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not [p for p in pids if ours(tmpdir, p)]:
            return True
        time.sleep(0.05)
    return False


def read_pids():
    """The "pid N" lines until EOF (or SIGTERM)."""
    pids, buf = [], b""
    try:
        while True:
            try:
                chunk = os.read(0, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.split()
                if len(parts) == 2 and parts[0] == b"pid":
                    pids.append(int(parts[1]))
    except Done:
        pass
    return pids


def main(tmpdir, stop_timeout):
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    pids = read_pids()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live = [p for p in pids if ours(tmpdir, p)]
    for p in live:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    if not wait_gone(tmpdir, live, stop_timeout):
        for p in live:
            if ours(tmpdir, p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        wait_gone(tmpdir, live, 5)
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
