"""PyMySQL through the real CLI and agent (--no-bpf: no root), against a real server.

known-causes-pymysql has the rows of known-causes; PyMySQL sends COM_QUIT only from close(),
so the 37 connections destroyed open must equal, independently, the server's Aborted_clients
increase and its "Aborted connection" notes, and the general log's Quit lines must be our 7
explicit closes (docs/pymysql.md).
"""

import collections
import os
import sys

import pytest

from tq_support import (AGENT_VERSIONS, KNOWN_CAUSES, KNOWN_CAUSES_TOTAL, REPO, cpython_param, destroy_causes, kinds,
                        load_events, report_json, run_traced, venv_python_for)

pytestmark = pytest.mark.server

DESTROYED = {key: n for key, n in KNOWN_CAUSES.items() if key[0] != "explicit_close"}
NOT_SENT = KNOWN_CAUSES_TOTAL - KNOWN_CAUSES[("explicit_close", None)]  # 37


class ServerTruth:
    """The server's own record of one run: Aborted_clients, its error log and general log."""

    def __init__(self, server):
        self.server = server
        self.admin = server.admin_connect()
        self.aborted0 = self.aborted_clients()
        self.errlog0 = os.path.getsize(server.error_log_path)
        self.genlog0 = server.general_log_size()

    def aborted_clients(self):
        cur = self.admin.cursor()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
        return int(cur.fetchone()[1])

    def settle(self):
        """Wait until the server has seen every closed socket (its counter stops moving)."""
        import time

        last, deadline = None, time.monotonic() + 10
        while time.monotonic() < deadline:
            now = self.aborted_clients()
            if now == last:
                break
            last = now
            time.sleep(0.3)

    def aborted_lines(self):
        with open(self.server.error_log_path, "rb") as f:
            f.seek(self.errlog0)
            return f.read().decode("utf-8", "replace").count("Aborted connection")

    def program_quits(self):
        """Quit lines of the app user's connections, without the tracer sampler's own one."""
        entries = self.server.general_log(self.genlog0)
        app = {cid for cid, cmd, arg in entries if cmd == "Connect" and arg.startswith(self.server.user + "@")}
        sampler = {cid for cid, cmd, arg in entries
                   if cmd == "Query" and ("PROCESSLIST" in arg or "Aborted_clients" in arg)}
        return sum(1 for cid, cmd, _ in entries if cmd == "Quit" and cid in app - sampler)


def test_known_causes_pymysql_agent_counts_match_the_servers_aborted_clients(server, tmp_path):
    truth = ServerTruth(server)
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes-pymysql",
                                          "--dsn", server.dsn_socket], extra=["--dsn", server.dsn_socket])
    assert proc.returncode == 0, proc.stderr
    truth.settle()
    events = load_events(capture).events
    counts = kinds(events)
    assert counts["conn_open"] == KNOWN_CAUSES_TOTAL
    assert counts["conn_close"] == KNOWN_CAUSES[("explicit_close", None)]
    assert destroy_causes(events) == DESTROYED
    conn_events = [e for e in events if e["k"] in ("conn_open", "conn_close", "conn_destroy")]
    assert all(e["driver"] == "pymysql" for e in conn_events)
    # conn is the socket inode: distinct for every simultaneously open connection, and each
    # destroyed or closed one was opened.
    opened = {e["conn"] for e in events if e["k"] == "conn_open"}
    assert {e["conn"] for e in conn_events if e["k"] != "conn_open"} <= opened
    assert all(e["quit"] is False for e in events if e["k"] == "conn_destroy")

    report = report_json(capture, tmp_path)
    by_cause = report["com_quit"]["by_cause"]
    assert {k: v for k, v in by_cause.items() if v} == {"explicit_close": 7, "refcount": 13, "gc": 21, "shutdown": 3}
    assert report["com_quit"]["gc_by_generation"] == {"0": 5, "1": 0, "2": 16}
    nq = report["no_quit"]
    assert nq["without_quit"] == NOT_SENT
    assert nq["by_cause"] == {"refcount": 13, "gc": 21, "shutdown": 3}
    # Three independent server-side truths of the same 37 and 7.
    assert nq["server_aborted_clients"] == NOT_SENT
    assert truth.aborted_clients() - truth.aborted0 == NOT_SENT
    assert truth.aborted_lines() == NOT_SENT
    assert truth.program_quits() == KNOWN_CAUSES[("explicit_close", None)]
    assert any("37 connections were closed without COM_QUIT (PyMySQL)" in s and "aborted client" in s
               for s in report["summary"])
    assert any("Aborted_clients rose by 37" in s for s in report["summary"])
    assert report["findings"][0]["title"].startswith("37 connections were closed without COM_QUIT")


def test_a_program_using_both_drivers_is_counted_per_driver(server, tmp_path):
    truth = ServerTruth(server)
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "both-drivers-pymysql",
                                          "--dsn", server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    truth.settle()
    events = load_events(capture).events
    per_driver = collections.Counter((e.get("driver", "mysqlclient"), e["k"], e.get("cause"))
                                     for e in events if e["k"] in ("conn_close", "conn_destroy"))
    assert per_driver == {("mysqlclient", "conn_close", None): 2, ("mysqlclient", "conn_destroy", "refcount"): 3,
                          ("mysqlclient", "conn_destroy", "gc"): 5, ("pymysql", "conn_close", None): 7,
                          ("pymysql", "conn_destroy", "refcount"): 11, ("pymysql", "conn_destroy", "gc"): 13}
    report = report_json(capture, tmp_path)
    assert report["connections"]["opened"] == 41
    nq = report["no_quit"]
    assert nq["by_driver"] == {"mysqlclient": {"explicit_close": 2, "refcount": 3, "gc": 5},
                               "pymysql": {"explicit_close": 7, "refcount": 11, "gc": 13}}
    assert nq["without_quit"] == 24 and nq["without_quit_by_driver"] == {"pymysql": 24}
    assert truth.aborted_clients() - truth.aborted0 == 24
    assert truth.program_quits() == 2 + 3 + 5 + 7
    assert any(s.startswith("By driver: mysqlclient 10 (") and "PyMySQL 31 (" in s for s in report["summary"])


SQLA_VENVS = {"sqla14": os.path.join(REPO, ".venvs", "sqla14", "bin", "python"),
              # SQLAlchemy 2 in the matrix venv of the system's CPython (Debian 12: 3.11, 13: 3.13).
              "sqla2": os.path.join(REPO, ".venvs", "py%d.%d" % sys.version_info[:2], "bin", "python")}


@pytest.mark.parametrize("venv", sorted(SQLA_VENVS))
def test_engine_per_call_pymysql_drops_are_explained_as_aborted_clients(venv, server, tmp_path):
    python = SQLA_VENVS[venv]
    if not os.path.exists(python):
        pytest.skip("scripts/setup.sh did not build %s" % python)
    truth = ServerTruth(server)
    proc, capture = run_traced(tmp_path, [python, "-m", "trace_quit.workloads", "engine-per-call-pymysql",
                                          "--dsn", server.dsn_tcp, "--tasks", "60", "--workers", "6",
                                          "--task-seconds", "0", "0.05", "--hold-seconds", "0",
                                          "--gc-threshold", "200", "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    truth.settle()
    report = report_json(capture, tmp_path)
    sqla = report["program"]["modules"].get("sqlalchemy", "")
    assert sqla.startswith("1.4") if venv == "sqla14" else sqla.startswith("2.")
    by_cause = report["com_quit"]["by_cause"]
    assert report["connections"]["opened"] == 60
    assert by_cause["explicit_close"] == 0 and by_cause["gc"] > 0
    nq = report["no_quit"]
    # Every connection ends without COM_QUIT (the GC or the exit destroys it): all aborted clients.
    assert nq["without_quit"] == 60 == truth.aborted_clients() - truth.aborted0
    assert truth.program_quits() == 0
    assert report["drops"], report["summary"]
    assert any("closed without COM_QUIT (PyMySQL)" in s and "aborted client" in s for s in report["summary"])
    assert all("aborted client" in d["explanation"] for d in report["drops"])


KILLED = """
import sys, pymysql
from trace_quit.workloads import dsn as dsnlib
kw = dsnlib.parse(sys.argv[1])
victim, killer = pymysql.connect(**kw), pymysql.connect(**kw)
killer.cursor().execute("KILL %d" % victim.thread_id())
try:
    victim.cursor().execute("SELECT 1")
except pymysql.err.OperationalError as exc:
    print("lost", exc.args[0])
victim.close()  # PyMySQL has dropped the socket: nothing to send
killer.close()
"""


def test_a_connection_the_server_killed_is_server_not_an_explicit_close(server, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc, capture = run_traced(tmp_path, [sys.executable, str(script), server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    events = load_events(capture).events
    ends = [(e["k"], e.get("cause")) for e in events if e["k"] in ("conn_close", "conn_destroy")]
    assert sorted(ends) == [("conn_close", None), ("conn_destroy", "server")]
    report = report_json(capture, tmp_path)
    assert report["connections"]["server"] == 1
    assert {k: v for k, v in report["com_quit"]["by_cause"].items() if v} == {"explicit_close": 1, "server": 1}
    assert report["no_quit"]["without_quit"] == 0


def test_an_unprobed_mysql_driver_import_is_named_in_the_report(server, tmp_path):
    # A stand-in package named like a real driver the agent does not probe (test double).
    pkg = tmp_path / "double" / "mariadb"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '0.0-test'\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "double"))
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", "import mariadb"], env=env)
    assert proc.returncode == 0, proc.stderr
    modules = [e for e in load_events(capture).events if e["k"] == "module"]
    assert [(e["name"], e["probed"]) for e in modules] == [("mariadb", False)]
    report = report_json(capture, tmp_path)
    name = "mariadb (MariaDB Connector/Python)"
    assert report["no_quit"]["unprobed_drivers"] == [name]
    assert any("The program imported %s: trace-quit does not probe it" % name in s for s in report["summary"])


@pytest.mark.parametrize("version", [cpython_param(v) for v in AGENT_VERSIONS])
def test_known_causes_pymysql_on_every_python(version, server, tmp_path):
    python = venv_python_for(version)
    assert os.path.exists(python), "scripts/setup.sh did not build the test venv for %s" % version
    proc, capture = run_traced(tmp_path, [python, "-m", "trace_quit.workloads", "known-causes-pymysql",
                                          "--dsn", server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    events = load_events(capture).events
    assert [e["python"][:len(version) + 1] for e in events if e["k"] == "agent_start"] == [version + "."]
    assert kinds(events)["conn_open"] == KNOWN_CAUSES_TOTAL
    assert kinds(events)["conn_close"] == KNOWN_CAUSES[("explicit_close", None)]
    assert destroy_causes(events) == DESTROYED
