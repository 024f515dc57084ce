"""issue 9: the server ends connections first (KILL, wait_timeout, server stopped).

Each case has its own disposable server. The traced program holds 3 connections and a
control one, waits while the test acts on the server, then runs a query on each of the 3
(OperationalError 2013/2006: libmariadb drops the socket) and closes them (or drops them:
refcount), then closes the control. The kernel side must show exactly, for each of the 3:
a successful connect with its socket fd, one ``bpf_peer_end`` on that fd (the server's EOF
on a read, or EPIPE/ECONNRESET on a write) before the close, and a ``bpf_close`` with
``sock=False``, ``eof=True``, ``last_errno`` 2013/2006 whose mysql_close sent nothing. The
control shows whether the server had also ended it (timeout and stop) by the result of its
COM_QUIT send or the TCP state its close left, and a normal close after a KILL of the others.

The report's ``by_cause["server"]`` is asserted in a separate test: the 3 (and the control
when the server ended it too; over TCP after a stop, only ``fin_first`` says so).
"""

import collections
import json
import os
import subprocess
import threading
import time

import pytest

from tq_support import TRACE_QUIT, VENV_PY, load_events, run_traced

pytestmark = [pytest.mark.bpf, pytest.mark.server]

N = 3
PROGRAM = r"""
import json, os, sys, time, MySQLdb
from trace_quit.workloads import dsn as dsnlib
dsn, ready, go, how = sys.argv[1:5]
kw = dsnlib.parse(dsn)
conns = [MySQLdb.connect(**kw) for _ in range(%d)]
control = MySQLdb.connect(**kw)
base = object.__basicsize__
info = {"ids": [c.thread_id() for c in conns], "conns": [id(c) + base for c in conns], "control": id(control) + base}
with open(ready + ".tmp", "w") as f:
    json.dump(info, f)
os.rename(ready + ".tmp", ready)
while not os.path.exists(go):
    time.sleep(0.02)
errors = []
for c in conns:
    try:
        c.cursor().execute("SELECT 1")
        errors.append(None)
    except MySQLdb.OperationalError as e:
        errors.append(e.args[0])
info["errors"] = errors
print(json.dumps(info), flush=True)
if how == "close":
    for c in conns:
        c.close()
else:
    del c
    conns.clear()   # the last references: mysqlclient's dealloc closes them (refcount)
control.close()
""" % N

#: case -> (how the program ends its 3 connections, whether the control is also ended by the server)
CASES = {"kill": ("close", False), "wait_timeout": ("drop", True), "server_stopped": ("close", True)}
EPIPE, ECONNRESET = 32, 104


def _start_server():
    from trace_quit.workloads.server import DisposableServer, ServerError, find_server_binary

    try:
        find_server_binary()
    except ServerError as e:
        pytest.skip(str(e))
    return DisposableServer().start()


@pytest.fixture(scope="module", params=[(c, t) for c in CASES for t in ("tcp", "socket")],
                ids=lambda p: "%s-%s" % p)
def ended_run(request, tmp_path_factory):
    """One traced run per (case, transport), each with its own server; shared by the tests below."""
    case, transport = request.param
    tmp = tmp_path_factory.mktemp("%s-%s" % (case, transport))
    server = _start_server()
    try:
        ready, go = str(tmp / "ready"), str(tmp / "go")
        prog = tmp / "prog.py"
        prog.write_text(PROGRAM)
        if case == "wait_timeout":
            admin = server.admin_connect()
            admin.cursor().execute("SET GLOBAL wait_timeout=2")  # sessions copy it at connect
            admin.close()
        acted = {}

        def act():
            deadline = time.monotonic() + 120
            while not os.path.exists(ready):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            with open(ready) as f:
                info = json.load(f)
            if case == "kill":
                admin = server.admin_connect()
                for tid in info["ids"]:
                    admin.cursor().execute("KILL %d" % tid)
                admin.close()
                time.sleep(0.3)
            elif case == "wait_timeout":
                time.sleep(3)  # idle past wait_timeout=2
            else:
                server.stop()
            acted["done"] = True
            open(go, "w").close()

        th = threading.Thread(target=act, daemon=True)
        th.start()
        dsn = server.dsn_tcp if transport == "tcp" else server.dsn_socket
        proc, capture = run_traced(tmp, [VENV_PY, str(prog), dsn, ready, go, CASES[case][0]], bpf=True,
                                   timeout=180)
        th.join(timeout=60)
        assert acted.get("done"), proc.stderr
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return case, transport, info, capture


def _by_conn(events, kind, pid):
    out = collections.defaultdict(list)
    for e in events:
        if e["k"] == kind and e["pid"] == pid:
            out[e["conn"]].append(e)
    return out


def test_the_kernel_sees_the_server_end_each_connection_first(ended_run):
    case, transport, info, capture = ended_run
    how, control_ended = CASES[case]
    cap = load_events(capture)
    events = cap.events
    pid = cap.header["child_pid"]
    assert cap.trailer["lost"]["bpf"] == 0
    ended, control = info["conns"], info["control"]
    assert len(set(ended)) == N
    # The program saw the server gone on every query; which code depends on the transport.
    assert set(info["errors"]) <= {2013, 2006} and len(info["errors"]) == N

    connects = _by_conn(events, "bpf_connect", pid)
    peer_ends = _by_conn(events, "bpf_peer_end", pid)
    closes = _by_conn(events, "bpf_close", pid)
    rets = _by_conn(events, "bpf_close_ret", pid)
    assert sorted(connects) == sorted(ended + [control])
    assert all(len(v) == 1 and v[0]["ok"] is True and v[0]["fd"] is not None for v in connects.values())

    # Exactly one peer end per ended connection, on its own socket, before its close; none on the control.
    assert sorted(peer_ends) == sorted(ended)
    for conn in ended:
        (pe,) = peer_ends[conn]
        assert pe["fd"] == connects[conn][0]["fd"]
        assert (pe["op"], pe["ret"]) in {("read", 0), ("write", -EPIPE), ("write", -ECONNRESET)}
        (close,) = closes[conn]
        (ret,) = rets[conn]
        assert pe["t"] < close["t"]
        assert close["cause"] == ("explicit_close" if how == "close" else "refcount")
        assert (close["sock"], close["eof"]) == (False, True)
        assert close["last_errno"] in (2013, 2006)
        assert (ret["wire"], ret["sends"], ret["send_err"], ret["tcp_from"]) == ("not_sent", 0, 0, None)

    (cclose,) = closes[control]
    (cret,) = rets[control]
    assert cclose["cause"] == "explicit_close"
    assert (cclose["sock"], cclose["eof"], cclose["last_errno"]) == (True, False, 0)
    assert cret["sends"] == 1
    if not control_ended:
        # KILL ended only the three: the control's close is an ordinary one. (On loopback the
        # server may answer the COM_QUIT with its FIN before our close(): tcp_from is then
        # close_wait, but the FIN came after mysql_close began, so fin_first is False.)
        assert (cret["wire"], cret["send_err"]) == ("confirmed", 0)
        assert cret["fin_first"] is (False if transport == "tcp" else None)
        if transport == "tcp":
            assert cret["tcp_from"] in ("established", "close_wait")
    else:
        # The server had ended the control too: its COM_QUIT failed, or (TCP) the server's FIN
        # had come in before mysql_close.
        failed = cret["send_err"] in (EPIPE, ECONNRESET)
        fin_first = cret["fin_first"] is True
        assert failed or fin_first, cret
        assert cret["wire"] == ("not_sent" if failed else "confirmed")
        if transport == "socket":
            assert failed
    wires = [e for e in events if e["k"] == "bpf_wire" and e["pid"] == pid]
    assert [(e["conn"], e["head"]) for e in wires] == [(control, "0100000001")]
    assert wires[0]["ret"] == (5 if cret["send_err"] == 0 else -cret["send_err"])


def test_the_report_attributes_them_to_the_server(ended_run):
    case, transport, info, capture = ended_run
    expected = N + (1 if CASES[case][1] else 0)
    r = subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    by_cause = json.loads(r.stdout)["com_quit"]["by_cause"]
    assert by_cause["server"] == expected
    assert by_cause["explicit_close"] == 4 - expected
