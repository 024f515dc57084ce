"""An unprivileged program writes the agent's own records into its channel, with the kernel
layer on, and holds 2,000 idle sockets on the metrics endpoint while it runs.

The report's totals must still be the server's general log, the forged records reported as
agent-only claims; the endpoint keeps answering with bounded labels; the tracer neither hangs
nor dies, and writes its trailer (docs/security.md: "The agent's word", "Metrics endpoint").
"""

import json
import os
import re
import subprocess
import time
import urllib.request

import pytest

from attacker import as_attacker, stop, sudo_env
from tq_support import TRACE_QUIT, VENV_PY, load_events

pytestmark = [pytest.mark.bpf, pytest.mark.server]

#: 2 close(), 3 last references dropped: 5 connections, 5 COM_QUITs in the general log. Then
#: the forgeries, written with the agent's own kinds and fields, and a wait for the test.
PROGRAM = r"""
import json, os, sys, time, MySQLdb
from trace_quit.workloads import dsn as dsnlib
dsn, ready, go = sys.argv[1:4]
kw = dsnlib.parse(dsn)
for _ in range(2):
    MySQLdb.connect(**kw).close()
for _ in range(3):
    c = MySQLdb.connect(**kw)
    del c
me = os.getpid()
out = open(os.environ["TRACE_QUIT_CHANNEL"], "w")   # blocking: the tracer drains it
def put(k, **fields):
    out.write(json.dumps(dict(k=k, t=time.monotonic_ns(), pid=fields.pop("pid", me), tid=me, **fields)) + "\n")
for i in range(100):                                  # 100 "gc" COM_QUITs the kernel never saw
    put("conn_destroy", conn=0x7f0000000000 + 16 * i, cause="gc", gen=2, cid=None)
put("conn_close", pid=999999, conn=0x10, stack=[])    # a process that does not exist
put("conn_open", conn=0x7e0000000000, stack=["/srv/x.py:1 in f"])   # never closed
for i in range(10000):                                # 10,000 generations and call sites
    conn = 0x7d0000000000 + 16 * i
    put("conn_open", conn=conn, stack=["/srv/site%d.py:%d in f" % (i, i)])
    put("conn_destroy", conn=conn, cause="gc", gen=3 + i if i % 2 else 0, cid=None)
put("gc_counts", by_gen={"0": 10 ** 30, "1": 2 ** 63 - 1, "7": 5})
put("agent_lost", n=10 ** 12)
out.close()
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
"""

#: Holds 2,000 connections to the metrics port, idle, until killed.
HOLDER = r"""
import socket, sys, time
port, held = int(sys.argv[1]), sys.argv[2]
socks = []
for _ in range(2000):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
open(held, "w").close()
time.sleep(300)
"""


def _scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.status, r.read().decode()


def _wait_for(path, proc, seconds):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting for %s" % path
        time.sleep(0.05)


def test_forged_records_and_idle_sockets_change_no_total(attacker, shared_tmp, server_factory):
    from trace_quit.workloads.server import free_port

    server = server_factory()
    since = server.general_log_size()
    port = free_port()
    capture = str(shared_tmp / "run.tqcap")
    ready, go, held = (str(shared_tmp / n) for n in ("ready", "go", "held"))
    tracer = subprocess.Popen(TRACE_QUIT + ["--quiet", "--format", "json", "-o", capture, "--metrics-port", str(port),
                                            "--", VENV_PY, "-c", PROGRAM, server.dsn_tcp, ready, go],
                              cwd=str(shared_tmp), env=sudo_env(attacker), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        _wait_for(ready, tracer, 180)
        holder = subprocess.Popen([VENV_PY, "-c", HOLDER, str(port), held], preexec_fn=as_attacker(attacker, 4096))
        _wait_for(held, holder, 30)
        for _ in range(4):  # the endpoint answers every scrape, with labels from closed sets
            t0 = time.monotonic()
            status, body = _scrape(port)
            assert status == 200 and time.monotonic() - t0 < 3
            gens = set(re.findall(r'generation="([^"]*)"', body))
            assert gens <= {"", "0", "1", "2"}, gens
            assert len(re.findall(r"^trace_quit_com_quit_total\{", body, re.M)) <= 10
            assert "site9999" not in body
            time.sleep(0.5)
        fds = len(os.listdir("/proc/%d/fd" % tracer.pid))
        assert fds < 200, "the tracer holds %d fds" % fds
        open(go, "w").close()
        out, err = tracer.communicate(timeout=120)
    finally:
        stop(tracer)
        if holder is not None:
            stop(holder)
    assert tracer.returncode == 0, err
    cap = load_events(capture)
    assert cap.status == "complete" and cap.trailer["rejected"]["total"] >= 5000  # bad generations, huge counts
    report = json.loads(out)
    # The independent truth: the server's general log for the program's user.
    log = server.general_log(since)
    ids = {cid for cid, cmd, arg in log if cmd == "Connect" and arg.startswith(server.user + "@")}
    quits = {cid for cid, cmd, _ in log if cmd == "Quit" and cid in ids}
    assert len(ids) == len(quits) == 5
    c = report["connections"]
    assert (c["opened"], c["com_quit"], c["never_closed"], c["failed"]) == (5, 5, 0, 0)
    assert {k: v for k, v in report["com_quit"]["by_cause"].items() if v} == {"explicit_close": 2, "refcount": 3}
    claims = report["agent_only"]
    # 100 ends, one for pid 999999, one open, 10,000 opens (half their ends refused: no generation 3+).
    assert claims["total"] == 100 + 1 + 1 + 10000 and 999999 in claims["pids"]
    assert claims["by_cause"] == {"gc": 100 + 5000, "explicit_close": 1, "never_closed": 1 + 5000}
    assert any("agent-only claims not counted" in line for line in report["summary"])
