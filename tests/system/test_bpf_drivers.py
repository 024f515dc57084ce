"""mysql-connector (C extension and pure), aiomysql and asyncmy: exact causes, both layers.

known-causes-drivers (workloads/known_causes_drivers.py) ends each driver's connections by
construction (close, refcount, gc, shutdown). Traced with both layers, the report's causes
must be exactly that; its COM_QUITs exactly the server's general-log Quits, and the ones
without exactly the rise of Aborted_clients. The kernel's socket layer sees every one of
these sockets (none goes through the probed libmysqlclient); the agent says who ended it.
Kernel alone, a COM_QUIT nobody saw close() send is "unknown" -- never explicit_close.
"""

import pytest

from test_bpf_known_causes import quits_for_user
from test_bpf_pymysql import _aborted_clients
from tq_support import cpython_matrix, report_json, run_traced, venv_python_for
from trace_quit.workloads import known_causes_drivers as kcd

pytestmark = [pytest.mark.bpf, pytest.mark.server]

#: Every driver on 3.8, 3.12 and 3.13, each where this machine has that CPython (a version it
#: lacks is deselected and said in the summary's "CPython matrix" line, as for every version test).
CASES = [pytest.param(d, v, marks=pytest.mark.cpython(v), id="%s-py%s" % (d, v))
         for v in ("3.12", "3.13", "3.8") for d in kcd.DRIVERS]


def _python(version, driver):
    import os
    import subprocess

    py = venv_python_for(version)
    module = {"connector-c": "_mysql_connector", "connector-pure": "mysql.connector"}.get(driver, driver)
    if not os.path.exists(py) or subprocess.run([py, "-c", "import " + module], capture_output=True).returncode:
        pytest.skip("no %s in .venvs/py%s (scripts/setup.sh installs it where it supports that Python)"
                    % (driver, version))
    return py


@pytest.mark.parametrize("driver,version", CASES)
def test_known_causes_per_driver_exact(bpf_server, tmp_path, driver, version):
    py = _python(version, driver)
    want = kcd.expected(driver)
    total = sum(want.values())
    quits = kcd.quits(driver)
    before = _aborted_clients(bpf_server)
    log_from = bpf_server.general_log_size()   # after that admin connection's own Quit
    proc, capture = run_traced(tmp_path, [py, "-m", "trace_quit.workloads", "known-causes-drivers",
                                          "--driver", driver, "--dsn", bpf_server.dsn_tcp], bpf=True)
    assert proc.returncode == 0, proc.stderr
    report = report_json(capture, tmp_path)
    by_cause = {k: v for k, v in report["com_quit"]["by_cause"].items() if v}
    if driver == "asyncmy" and by_cause.get("shutdown"):
        # The connection left open keeps its transport: the interpreter's finalisation may
        # destroy it (shutdown) or the process may end with it open (never closed), run to run.
        by_cause["never_closed"] = by_cause.get("never_closed", 0) + by_cause.pop("shutdown")
    assert by_cause == want, [(q["cause"], q["reason"]) for q in report["quits"]]
    if "gc" in want:
        assert report["com_quit"]["gc_by_generation"]["2"] == want["gc"]
    never = report["com_quit"]["by_cause"]["never_closed"]   # asyncmy's connection left open
    wire = report["com_quit"]["wire"]
    assert (wire["confirmed"], wire["not_sent"]) == (quits, total - quits - never)
    c = report["connections"]
    assert (c["opened"], c["ended"], c["with_com_quit"], c["without_com_quit"]) == (
        total, total - never, quits, total - quits - never)
    # The independent truth: the server's Quits and aborted clients.
    assert quits_for_user(bpf_server, log_from, bpf_server.user) == quits
    assert _aborted_clients(bpf_server, reach=before + total - quits) - before == total - quits
    assert report["no_quit"]["without_quit"] == total - quits
    name = {"connector-c": "mysql-connector-c", "connector-pure": "mysql-connector"}.get(driver, driver)
    assert list(report["no_quit"]["by_driver"]) == [name]
    assert report["no_quit"]["unprobed_drivers"] == []


def test_connector_c_from_the_kernel_alone_never_guesses_a_close(bpf_server, tmp_path):
    # The C extension's destructor sends COM_QUIT: without the agent, the kernel names what a
    # bracket shows (the collection, the interpreter finalising) and calls the rest -- 2
    # close() and 2 refcount drops, the same on the wire -- unknown, never explicit_close.
    # 3.12 where present, else the nearest CPython this machine has (Debian 13: 3.13 alone).
    present = cpython_matrix()
    py = _python(next((v for v in ("3.12", "3.13", "3.11", "3.14", "3.15") if v in present), "3.12"), "connector-c")
    proc, capture = run_traced(tmp_path, [py, "-m", "trace_quit.workloads", "known-causes-drivers",
                                          "--driver", "connector-c", "--dsn", bpf_server.dsn_tcp],
                               bpf=True, extra=["--no-agent"])
    assert proc.returncode == 0, proc.stderr
    report = report_json(capture, tmp_path)
    assert {k: v for k, v in report["com_quit"]["by_cause"].items() if v} == {"gc": 2, "shutdown": 1, "unknown": 4}
    assert report["com_quit"]["wire"]["confirmed"] == 7
    assert all(q["reason"].startswith("COM_QUIT sent, by whom unknown") for q in report["quits"]
               if q["cause"] == "unknown")
