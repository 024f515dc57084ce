"""The pytest plugin until the process is done with the database, on suites shaped like real ones.

SUITE is shaped like SQLAlchemy's own: a global Engine created when the session starts, used
by a test and disposed in the conftest's ``pytest_sessionfinish`` (after pytest's last test);
Engines of other dialects (``sqlite://``, a mocked ``postgresql://``); one test leaking a
connection in a reference cycle; one whose leak ``gc.freeze()`` hides from the collector.
Only the two leaks are blamed, with and without xdist, and the counts equal the server's
general log. EXIT_HANDLERS: a connection a conftest's ``atexit`` handler closes is that
handler's close, and the exit status follows (the plugin's summary counted it still open).
Each inner run is a real ``python -m pytest`` in a subprocess (tests/integration/test_pytest_plugin.py
says why); the general log is read per run.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from test_pytest_plugin import PYTHONS, run_inner, summary_rows, totals

pytestmark = pytest.mark.server

pytest_plugins = ["pytester"]

SUITE_CONFTEST = '''
import os

import pytest
import sqlalchemy as sa

ENGINE = None


def pytest_sessionstart(session):
    global ENGINE
    ENGINE = sa.create_engine(os.environ["TQ_URL"])


def pytest_sessionfinish(session):
    ENGINE.dispose()


@pytest.fixture
def db():
    return ENGINE
'''

SUITE = '''
import gc
import os
from unittest import mock

import sqlalchemy as sa

URL = os.environ["TQ_URL"]


def test_uses_the_global_engine(db):
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_sqlite_engine():
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 2")).scalar() == 2


def test_mocked_postgresql_engine():
    engine = sa.create_engine("postgresql+psycopg2://", module=mock.Mock(), _initialize=False)
    assert engine.dialect.name == "postgresql"


def leak_a_cycle(n):
    engine = sa.create_engine(URL)
    conn = engine.connect()
    conn.execute(sa.text("SELECT %d" % n))
    holder = {"conn": conn}
    holder["self"] = holder


def test_leaks_a_cycle():
    leak_a_cycle(3)


def test_frozen_leak():
    gc.disable()  # no collection may find the cycle before it is frozen
    leak_a_cycle(4)
    gc.freeze()  # the cycle, garbage now, moves where no collection looks
    gc.enable()


def test_disposes_its_engine():
    engine = sa.create_engine(URL)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 5"))
    engine.dispose()
'''

EXIT_CONFTEST = '''
import atexit

KEPT = []


def _close_kept():
    for conn in KEPT:
        conn.close()


atexit.register(_close_kept)
'''

EXIT_TEST = '''
import os

import sqlalchemy as sa

from conftest import KEPT


def test_keeps_a_connection():
    engine = sa.create_engine(os.environ["TQ_URL"], poolclass=sa.pool.NullPool)
    KEPT.append(engine.connect())
'''

XDIST = pytest.param(("-n", "2"), id="xdist")
PLAIN = pytest.param((), id="plain")


def logged(server, since, connects):
    """(Connect, Quit) lines of the general log since ``since``, once ``connects`` Quits are in (<= 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        commands = [cmd for _, cmd, _ in server.general_log(since)]
        if commands.count("Quit") >= connects or time.monotonic() > deadline:
            return commands.count("Connect"), commands.count("Quit")
        time.sleep(0.1)


def report(capture, fmt="json"):
    proc = subprocess.run([PYTHONS["sqla2"], "-m", "trace_quit.tracer.cli", "report", "--format", fmt, capture],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if fmt == "json" else proc.stdout


@pytest.mark.parametrize("xdist", [PLAIN, XDIST])
def test_only_the_leaks_are_blamed(pytester, server, xdist):
    pytester.makeconftest(SUITE_CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    since = server.general_log_size()
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], *xdist, "--trace-quit-fail=gc,shutdown", "-rf",
                          "--trace-quit-capture", "run.tqcap")
    assert code == 1, out
    assert re.search(r"^1 failed, 6 passed in ", out, re.M), out
    assert re.findall(r"^FAILED (\S+)", out, re.M) == ["test_suite.py::test_leaks_a_cycle"], out
    # Frozen garbage is looked at once the tests are over: found, charged to its test, failing the run.
    assert re.search(r"^  FAILED test_suite\.py::test_frozen_leak: 1 connection closed by the garbage collector "
                     r"\(generation 2\)$", out, re.M), out
    assert "gc.freeze() had hidden" in out
    rows = summary_rows(out)
    assert sorted(rows) == ["test_suite.py::test_frozen_leak", "test_suite.py::test_leaks_a_cycle"], out
    for row in rows.values():
        assert re.fullmatch(r"1 gc \(gen\d 1\), 1 engine\(s\) not disposed", row), out
    # The global Engine's connection is closed by the conftest's sessionfinish: not open at the end.
    assert totals(out).groups() == ("4", "explicit_close 2, refcount 0, gc 2, unknown 0, open_at_end 0", "2"), out
    assert "Engines of other dialects, not traced: postgresql 1, sqlite 1" in out
    assert logged(server, since, 4) == (4, 4)  # the server's word: 4 connections, each ended by a Quit

    doc = report(str(pytester.path / "run.tqcap"))
    assert doc["program"]["exit_status"] == 1
    argv = doc["program"]["argv"]
    assert argv[1:3] == ["-m", "pytest"] and "--trace-quit-fail=gc,shutdown" in argv, argv
    assert doc["connections"]["opened"] == 4 and doc["com_quit"]["by_cause"]["gc"] == 2
    assert {row["nodeid"]: row["by_cause"] for row in doc["tests"]} == {
        "test_suite.py::test_uses_the_global_engine": {"explicit_close": 1},
        "test_suite.py::test_leaks_a_cycle": {"gc": 1},
        "test_suite.py::test_frozen_leak": {"gc": 1},
        "test_suite.py::test_disposes_its_engine": {"explicit_close": 1}}
    assert re.search(r"^ +1  gc 1 +test_suite\.py::test_leaks_a_cycle$",
                     report(str(pytester.path / "run.tqcap"), "text"), re.M)


@pytest.mark.parametrize("xdist", [PLAIN, XDIST])
def test_what_exit_handlers_close_is_theirs(pytester, server, xdist):
    pytester.makeconftest(EXIT_CONFTEST)
    pytester.makepyfile(test_keeper=EXIT_TEST)
    since = server.general_log_size()
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], *xdist, "--trace-quit-fail=shutdown")
    # Open after the session's finish hooks, closed by the conftest's atexit handler: no leak.
    assert code == 0, out
    if xdist:
        assert totals(out).group(2) == "explicit_close 1, refcount 0, gc 0, unknown 0, open_at_end 0", out
        assert "the workers' exit handlers closed 1 connection(s) (explicit_close 1)" in out
    else:  # the summary was printed before: the plugin corrects it on stderr, and the exit status follows
        assert "1 connection(s) still open after the session's finish hooks" in out
        assert ("trace-quit: the exit handlers closed 1 connection(s) the summary counted as open_at_end "
                "(explicit_close 1); 0 still open at exit") in out
        assert "trace-quit: exit status 0, not 1: no leak left (--trace-quit-fail)" in out
    assert logged(server, since, 1) == (1, 1)


def test_sqlalchemy_from_a_source_tree_is_a_library(pytester, server):
    """A checkout's lib/sqlalchemy/ (on sys.path, under the rootdir) is SQLAlchemy as much as an
    installed package: no chain link names one of its lines as the program's."""
    import sqlalchemy

    shutil.copytree(os.path.dirname(sqlalchemy.__file__), str(pytester.path / "lib" / "sqlalchemy"))
    pytester.makepyfile(test_leaky='''
import os
import sqlalchemy as sa


def test_engine_per_call():
    assert "/lib/sqlalchemy/" in sa.__file__
    conn = sa.create_engine(os.environ["TQ_URL"]).connect()
    holder = [conn]
    holder.append(holder)
''')
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit-fail=gc",
                          extra_env={"PYTHONPATH": str(pytester.path / "lib")})
    assert code == 1, out
    assert "engine created at test_leaky.py:7 in test_engine_per_call (" in out, out
    assert "lib/sqlalchemy" not in out.split("trace-quit: connections the tests did not close")[1], out


def test_two_in_process_runs(pytester, server):
    """pytest.main() twice in one script: each run traces itself, closes its books at its end and
    leaves the script's exit status alone (only the process's own command line defers to exit)."""
    pytester.makeconftest(SUITE_CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makepyfile(twice='''
import sys

import pytest

codes = [pytest.main(["-q", "-p", "no:cacheprovider", "--trace-quit-fail=gc", "-k", "leaks_a_cycle or global"])
         for _ in range(2)]
print("CODES", [int(c) for c in codes])
sys.exit(7)
''')
    from trace_quit.workloads import dsn

    env = dict(os.environ, TQ_URL=dsn.sqlalchemy_url(server.dsn_socket))
    env.pop("PYTEST_ADDOPTS", None)
    since = server.general_log_size()
    proc = subprocess.run([PYTHONS["sqla2"], "twice.py"], cwd=str(pytester.path), env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 7, out
    assert "CODES [1, 1]" in out and "already runs" not in out, out
    assert len(re.findall(r"^2 connection\(s\) opened; explicit_close 1, refcount 0, gc 1, unknown 0, open_at_end 0; "
                          r"1 test\(s\) with leaks$", out, re.M)) == 2, out
    assert logged(server, since, 4) == (4, 4)
