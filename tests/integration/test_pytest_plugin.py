"""The pytest plugin (tracer/pytest_plugin.py) on suites run by ``pytester`` against a real server.

The inner suites run in a subprocess (the agent is process-wide and stays installed), with
the plugin found through its ``pytest11`` entry point, as a user gets it.

LEAKY: a suite with known leaks — an engine per call (3 connections the GC closes, 3 engines
never disposed), a Session never closed on a per-test engine, a clean shared engine — and
one clean test. CLEAN: the same work done right.
"""

import json
import os
import re
import subprocess

import pytest

from tq_support import REPO

pytestmark = pytest.mark.server

pytest_plugins = ["pytester"]

LEAKY = '''
import os
import sqlalchemy as sa
from sqlalchemy.orm import Session

URL = os.environ["TQ_URL"]


def engine_per_call():
    engine = sa.create_engine(URL)
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT 1")).scalar()


def test_engine_per_call():
    assert [engine_per_call() for _ in range(3)] == [1, 1, 1]


def test_session_never_closed():
    session = Session(sa.create_engine(URL))
    assert session.execute(sa.text("SELECT 2")).scalar() == 2


def test_shared_engine(shared_engine):
    with shared_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 3")).scalar() == 3


def test_no_database():
    assert True
'''

CLEAN = '''
import os
import sqlalchemy as sa
from sqlalchemy.orm import Session

URL = os.environ["TQ_URL"]


def test_engine_disposed():
    engine = sa.create_engine(URL)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_session_closed(shared_engine):
    with Session(shared_engine) as session:
        assert session.execute(sa.text("SELECT 2")).scalar() == 2


def test_shared_engine(shared_engine):
    with shared_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 3")).scalar() == 3
'''

CONFTEST = '''
import os
import pytest
import sqlalchemy as sa


@pytest.fixture(scope="session")
def shared_engine():
    engine = sa.create_engine(os.environ["TQ_URL"])
    yield engine
    engine.dispose()
'''

SQLA14_PY = os.path.join(REPO, ".venvs", "sqla14", "bin", "python")
PYTHONS = {"sqla2": os.path.join(REPO, ".venv", "bin", "python"), "sqla14": SQLA14_PY}


def run_inner(pytester, server, python, *args, extra_env=None):
    """Run pytest on pytester's directory with ``python``; return (returncode, stdout)."""
    from trace_quit.workloads import dsn

    env = dict(os.environ, TQ_URL=dsn.sqlalchemy_url(server.dsn_socket), **(extra_env or {}))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("TRACE_QUIT_NO_SKIP", None)
    proc = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=str(pytester.path), env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def summary_rows(out):
    """{nodeid: line} of the plugin's summary section."""
    section = out.split("trace-quit: connections the tests did not close", 1)[1]
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+::\S+): (.*)$", section, re.M)}


def assert_leaky_rows(out):
    """LEAKY's two leaking tests, exactly: the GC's generation varies with the run, the counts do not."""
    rows = summary_rows(out)
    assert sorted(rows) == ["test_leaky.py::test_engine_per_call", "test_leaky.py::test_session_never_closed"], out
    assert re.fullmatch(r"3 gc \((gen\d \d(, )?)+\), 3 engine\(s\) not disposed",
                        rows["test_leaky.py::test_engine_per_call"]), out
    assert re.fullmatch(r"1 gc \(gen\d 1\), 1 engine\(s\) not disposed",
                        rows["test_leaky.py::test_session_never_closed"]), out


def totals(out):
    return re.search(r"^(\d+) connection\(s\) opened; (.*); (\d+) test\(s\) with leaks$", out, re.M)


@pytest.fixture(params=sorted(PYTHONS))
def python(request):
    path = PYTHONS[request.param]
    assert os.path.exists(path), "scripts/setup.sh did not build %s" % path
    return path


def test_known_leaks_exact_per_test_counts(pytester, server, python):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    code, out = run_inner(pytester, server, python, "--trace-quit")
    assert code == 0, out
    assert "4 passed" in out
    assert_leaky_rows(out)
    assert "engine created at test_leaky.py:9 in engine_per_call (" in out
    m = totals(out)
    assert m.group(1) == "5"  # 3 + 1 + the shared engine's one pooled connection
    assert m.group(2) == "explicit_close 1, refcount 0, gc 4, unknown 0, open_at_end 0"
    assert m.group(3) == "2"


def test_fail_mode_fails_the_opening_test_with_the_chain(pytester, server):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit-fail=gc,shutdown", "-rf")
    assert code == 1, out
    assert "2 failed, 4 passed" in out, out
    assert "FAILED test_leaky.py::test_engine_per_call" in out
    assert "FAILED test_leaky.py::test_session_never_closed" in out
    assert "trace-quit: test_leaky.py::test_engine_per_call opened 3 connection(s) the program did not close" in out
    section = out.split("test_engine_per_call opened 3", 1)[1].split("_____", 1)[0]
    assert sum(int(n) for n in re.findall(r"^  (\d+) closed by the garbage collector \(generation \d\)$",
                                          section, re.M)) == 3, out
    assert "engine created at test_leaky.py:9 in engine_per_call (" in out
    assert "test_leaky.py::test_session_never_closed opened 1 connection(s)" in out


def test_clean_suite_reports_nothing_and_passes(pytester, server, python):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_clean=CLEAN)
    code, out = run_inner(pytester, server, python, "--trace-quit-fail=gc,shutdown,unknown")
    assert code == 0, out
    assert "3 passed" in out and "failed" not in out
    assert summary_rows(out) == {}
    m = totals(out)
    assert (m.group(1), m.group(3)) == ("2", "0"), out
    assert m.group(2) == "explicit_close 2, refcount 0, gc 0, unknown 0, open_at_end 0"


def test_off_by_default(pytester, server):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    code, out = run_inner(pytester, server, PYTHONS["sqla2"])
    assert code == 0, out
    assert "trace-quit" not in out


def test_ini_option_turns_it_on(pytester, server):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makeini("[pytest]\ntrace_quit = true\ntrace_quit_fail = gc\n")
    code, out = run_inner(pytester, server, PYTHONS["sqla2"])
    assert code == 1, out
    assert "2 failed, 4 passed" in out, out


def test_capture_reads_with_trace_quit_report(pytester, server):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    capture = str(pytester.path / "run.tqcap")
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit-capture", capture)
    assert code == 0, out
    assert oct(os.stat(capture).st_mode & 0o777) == "0o600"
    report = _report_json(capture)
    assert report["connections"]["opened"] == 5
    assert report["com_quit"]["by_cause"]["gc"] == 4
    assert report["com_quit"]["by_cause"]["explicit_close"] == 1
    # Nothing the user had is overwritten.
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit-capture", capture)
    assert code == 4 and "run.tqcap exists" in out, out


def test_xdist_workers_merge(pytester, server):
    pytest.importorskip("xdist")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    capture = str(pytester.path / "run.tqcap")
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "-n", "2", "--trace-quit",
                          "--trace-quit-capture", capture)
    assert code == 0, out
    assert_leaky_rows(out)
    # The shared engine is a session fixture: each worker that ran test_shared_engine has one.
    assert totals(out).group(2) == "explicit_close 1, refcount 0, gc 4, unknown 0, open_at_end 0", out
    report = _report_json(capture)
    assert report["com_quit"]["by_cause"]["gc"] == 4
    assert not [p for p in os.listdir(str(pytester.path)) if p.startswith("run.tqcap.")]


def _report_json(capture):
    proc = subprocess.run([PYTHONS["sqla2"], "-m", "trace_quit.tracer.cli", "report", "--format", "json", capture],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


KEEPER = '''
import json
import os
import MySQLdb

KEPT = []


def test_keeps_a_connection():
    KEPT.append(MySQLdb.connect(**json.loads(os.environ["TQ_CONNECT"])))


def test_clean():
    MySQLdb.connect(**json.loads(os.environ["TQ_CONNECT"])).close()
'''


def connect_env(server):
    return {"TQ_CONNECT": json.dumps({"unix_socket": server.socket_path, "user": server.user,
                                      "password": server.password, "database": server.database})}


def test_open_at_session_end_fails_the_session_and_names_the_test(pytester, server):
    pytester.makepyfile(test_keeper=KEEPER)
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit-fail=shutdown",
                          extra_env=connect_env(server))
    assert code == 1, out
    assert "2 passed" in out and "failed" not in out.splitlines()[-1], out
    assert summary_rows(out) == {"test_keeper.py::test_keeps_a_connection": "1 open_at_end"}, out
    assert "FAILED test_keeper.py::test_keeps_a_connection: 1 connection still open when the process was done" in out
    assert "connection opened at test_keeper.py:9 in test_keeps_a_connection" in out
    # Without a fail mode the same run passes.
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "--trace-quit", extra_env=connect_env(server))
    assert code == 0, out


OUTCOMES = '''
import pytest


def test_fails():
    assert 1 == 2


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


@pytest.mark.xfail(strict=True)
def test_xfails():
    assert False


def test_passes():
    pass
'''


def test_outcomes_unchanged_when_nothing_leaks(pytester, server):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_clean=CLEAN, test_outcomes=OUTCOMES)
    without = run_inner(pytester, server, PYTHONS["sqla2"], "-rA")
    with_plugin = run_inner(pytester, server, PYTHONS["sqla2"], "-rA", "--trace-quit-fail=gc,shutdown,unknown")
    assert without[0] == with_plugin[0] == 1

    def outcomes(out):
        return sorted(line.split(" - ")[0] for line in out.splitlines()
                      if line.split(" ")[0] in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "ERROR"))

    assert outcomes(without[1]) == outcomes(with_plugin[1])
    assert len(outcomes(without[1])) == 7
    assert re.search(r"1 failed, 4 passed, 1 skipped, 1 xfailed", with_plugin[1]), with_plugin[1]


def test_fail_mode_under_xdist(pytester, server):
    pytest.importorskip("xdist")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky=LEAKY)
    code, out = run_inner(pytester, server, PYTHONS["sqla2"], "-n", "2", "--trace-quit-fail=gc", "-rf")
    assert code == 1, out
    assert "2 failed, 4 passed" in out, out
    assert "FAILED test_leaky.py::test_engine_per_call" in out
    assert "FAILED test_leaky.py::test_session_never_closed" in out
