"""issue 19: the kernel layer sees PyMySQL's sockets (tracer/bpf/probes/msock.h) without the agent.

A socket a traced process connects outside mysql_real_connect becomes a MySQL socket when
the server greeting is read on it; at its close the kernel says whether COM_QUIT was written
on it and the close's context. known-causes-pymysql must come out exactly from the kernel
alone, from the agent alone (tests/integration/test_pymysql.py) and from both, with every
destruction ``not_sent`` and the server's Aborted_clients rising by exactly that many.
"""

import collections
import time

import pytest

from bpf_harness import trace_command
from tq_support import KNOWN_CAUSES, VENV_PY, report_json, run_traced, tls_server

pytestmark = [pytest.mark.bpf, pytest.mark.server]

CLOSE = KNOWN_CAUSES[("explicit_close", None)]
#: Without the atexit rows: what the kernel's msock logic decides on its own, whatever moment
#: the kernel layer takes as the start of shutdown (interface 2 moves it after the last atexit handler).
NO_ATEXIT = ["--atexit-refcount", "0", "--atexit-gc", "0"]
NO_ATEXIT_CAUSES = {("explicit_close", None): 7, ("refcount", None): 11, ("gc", 0): 5, ("gc", 2): 13,
                    ("shutdown", None): 3}


def _aborted_clients(server, reach=None):
    """The server's Aborted_clients; with ``reach``, read again (up to 5 s) until it is at least that.

    The server counts an aborted client when its connection thread reads the EOF, which may come
    after the traced program has exited (a connection left open, closed by the kernel at exit):
    read at once, the last one may not be counted yet. A count past ``reach`` is returned as it is."""
    deadline = time.monotonic() + 5
    while True:
        conn = server.admin_connect()
        try:
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
            n = int(cur.fetchone()[1])
        finally:
            conn.close()
        if reach is None or n >= reach or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


@pytest.mark.parametrize("transport", ["tcp", "socket"])
def test_msock_records_of_known_causes_pymysql(bpf_server, tmp_path, transport):
    dsn = bpf_server.dsn_tcp if transport == "tcp" else bpf_server.dsn_socket
    run = trace_command([VENV_PY, "-m", "trace_quit.workloads", "known-causes-pymysql", "--dsn", dsn] + NO_ATEXIT,
                        output_path=str(tmp_path / "out.txt"))
    assert run.status == 0, run.output
    connects = run.of("bpf_sock_connect")
    closes = run.of("bpf_sock_close")
    total = sum(NO_ATEXIT_CAUSES.values())
    assert len(connects) == len(closes) == total
    assert {e["pid"] for e in closes} == {run.pid}
    assert collections.Counter((e["cause"], e["gen"]) for e in closes) == NO_ATEXIT_CAUSES
    # COM_QUIT was written exactly on the sockets closed by close(); none on the others.
    assert collections.Counter((e["cause"] == "explicit_close", e["wire"]) for e in closes) == {
        (True, "confirmed"): CLOSE, (False, "not_sent"): total - CLOSE}
    # No mysqlclient connection: the library probes saw nothing.
    assert run.of("bpf_connect") == [] and run.of("bpf_close") == []


#: rows -> (workload arguments, the causes they produce). "default" has the atexit rows, whose
#: kernel-side causes need interface 2 (shutdown after the last atexit handler) in probes.c,
#: as tests/system/test_bpf_known_causes.py does for mysqlclient.
ROWS = {"no-atexit": (NO_ATEXIT, NO_ATEXIT_CAUSES), "default": ([], KNOWN_CAUSES)}


def _by_cause(causes, layers="both"):
    # The kernel alone cannot tell a close() from a destructor that sends COM_QUIT (mysql-
    # connector's C extension does): its COM_QUITs outside any collection are "unknown".
    out = collections.Counter()
    for (cause, _gen), n in causes.items():
        out["unknown" if layers == "kernel" and cause == "explicit_close" else cause] += n
    return dict(out)


@pytest.mark.parametrize("rows", sorted(ROWS))
@pytest.mark.parametrize("layers", ["kernel", "both"])
def test_known_causes_pymysql_exact_counts_and_aborted_clients(bpf_server, tmp_path, layers, rows):
    args, causes = ROWS[rows]
    total = sum(causes.values())
    before = _aborted_clients(bpf_server)
    extra = ["--dsn", bpf_server.dsn_socket] + (["--no-agent"] if layers == "kernel" else [])
    proc, capture = run_traced(tmp_path, [VENV_PY, "-m", "trace_quit.workloads", "known-causes-pymysql",
                                          "--dsn", bpf_server.dsn_tcp] + args, bpf=True, extra=extra)
    assert proc.returncode == 0, proc.stderr
    report = report_json(capture, tmp_path)
    by_cause = {k: v for k, v in report["com_quit"]["by_cause"].items() if v}
    assert by_cause == _by_cause(causes, layers)
    assert report["com_quit"]["gc_by_generation"] == {"0": causes[("gc", 0)], "1": 0, "2": causes[("gc", 2)]}
    not_sent = total - CLOSE
    assert report["com_quit"]["wire"] == {"confirmed": CLOSE, "not_sent": not_sent, "encrypted": 0, "unobserved": 0}
    nq = report["no_quit"]
    assert nq["without_quit"] == not_sent == nq["server_aborted_clients"]
    assert _aborted_clients(bpf_server, reach=before + not_sent) - before == not_sent
    # No layer disagreement, no server misreading of PyMySQL's silent closes.
    assert report["connections"]["server"] == 0
    unknown = [q for q in report["quits"] if q["cause"] == "unknown"]
    assert len(unknown) == (CLOSE if layers == "kernel" else 0)
    assert all(q["reason"].startswith("COM_QUIT sent, by whom unknown") for q in unknown)
    driver = "socket" if layers == "kernel" else "pymysql"
    assert nq["by_driver"] == {driver: _by_cause(causes, layers)}
    if layers == "kernel":
        assert nq["outside_library"] == total
        assert any("opened outside the probed client library" in s for s in report["summary"])
    else:
        assert all(q["reason"] is None for q in report["quits"])


@pytest.mark.parametrize("layers", ["kernel", "both"])
def test_both_drivers_counted_per_driver_by_the_kernel(bpf_server, tmp_path, layers):
    # both-drivers-pymysql: mysqlclient 2 close / 3 refcount / 5 gc; PyMySQL 7 / 11 / 13.
    extra = ["--no-agent"] if layers == "kernel" else []
    proc, capture = run_traced(tmp_path, [VENV_PY, "-m", "trace_quit.workloads", "both-drivers-pymysql",
                                          "--dsn", bpf_server.dsn_socket], bpf=True, extra=extra)
    assert proc.returncode == 0, proc.stderr
    report = report_json(capture, tmp_path)
    other = "socket" if layers == "kernel" else "pymysql"
    nq = report["no_quit"]
    closes = "unknown" if layers == "kernel" else "explicit_close"   # see _by_cause
    assert nq["by_driver"] == {"mysqlclient": {"explicit_close": 2, "refcount": 3, "gc": 5},
                               other: {closes: 7, "refcount": 11, "gc": 13}}
    assert nq["without_quit_by_driver"] == {other: 24}
    # mysqlclient's destructions send COM_QUIT; PyMySQL's do not.
    assert report["com_quit"]["wire"] == {"confirmed": 17, "not_sent": 24, "encrypted": 0, "unobserved": 0}
    assert report["connections"]["server"] == 0
    assert sum(q["cause"] == "unknown" for q in report["quits"]) == (7 if layers == "kernel" else 0)


def test_statically_linked_mariadb_children_are_counted_outside_the_library(bpf_server, tmp_path):
    # Debian's `mariadb` client carries its own copy of the client library: no library probe
    # sees it; the kernel's msock does (issue 12, "connections it cannot see").
    import os
    import shutil

    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb/mysql command-line client installed")
    # --skip-ssl: MariaDB 11.4+'s client (Debian 13) insists on TLS by default, and the plain
    # disposable server (workloads/server.py) offers none; 10.11's client accepts it too.
    script = ("%s --no-defaults --skip-ssl -S %s -u %s -e 'SELECT 1' >/dev/null && "
              "%s --no-defaults --skip-ssl -h 127.0.0.1 -P %d -u %s -e 'SELECT 1' >/dev/null" % (
                  client, bpf_server.socket_path, bpf_server.user, client, bpf_server.port, bpf_server.user))
    env = dict(os.environ, MYSQL_PWD=bpf_server.password)
    proc, capture = run_traced(tmp_path, ["/bin/sh", "-c", script], bpf=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = report_json(capture, tmp_path)
    assert report["connections"]["opened"] == 2
    assert report["no_quit"]["outside_library"] == 2
    # Their COM_QUITs went out, but the kernel cannot tell a close() from a destructor's.
    assert report["no_quit"]["by_driver"] == {"socket": {"unknown": 2}}
    assert report["com_quit"]["wire"]["confirmed"] == 2 and report["no_quit"]["without_quit"] == 0
    assert any(s.startswith("2 MySQL connections were opened outside the probed client library")
               for s in report["summary"])


TLS_PROG = r"""
import sys, pymysql
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
def connect():
    c = pymysql.connect(ssl={"ca": sys.argv[2], "check_hostname": False}, **kw)
    cur = c.cursor()
    cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
    assert cur.fetchone()[1], "not encrypted"
    cur.close()
    return c
for _ in range(2):
    connect().close()
for _ in range(3):
    c = connect()
    del c
"""


def test_tls_pymysql_closes_are_encrypted_and_the_agent_names_the_cause(tmp_path):
    # Over TLS the kernel cannot see COM_QUIT, so it cannot tell close() from a destruction:
    # its cause is unknown and the agent's stands; the destructions are still aborted clients.
    script = tmp_path / "tls.py"
    script.write_text(TLS_PROG)
    with tls_server(tmp_path) as server:
        before = _aborted_clients(server)
        proc, capture = run_traced(tmp_path, [VENV_PY, str(script), server.dsn_tcp, server.tls_cert], bpf=True,
                                   extra=["--dsn", server.dsn_socket])
        assert proc.returncode == 0, proc.stderr
        report = report_json(capture, tmp_path)
        aborted = _aborted_clients(server, reach=before + 3) - before
    closes = [q for q in report["quits"]]
    assert {k: v for k, v in report["com_quit"]["by_cause"].items() if v} == {"explicit_close": 2, "refcount": 3}
    assert report["com_quit"]["wire"]["encrypted"] == 5
    assert all("the eBPF layer could not attribute it" in q["reason"] for q in closes)
    assert report["no_quit"]["without_quit"] == 3 == aborted == report["no_quit"]["server_aborted_clients"]
