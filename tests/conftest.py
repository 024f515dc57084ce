"""Fixtures shared by every test layer.

``server``: one disposable MariaDB/MySQL server for the whole test session
(``trace_quit.workloads.server.DisposableServer``: database ``tq``, user ``tq_app``, table
``users`` with 100 rows, general log at ``server.general_log_path``). Mark tests that use
it ``@pytest.mark.server``. Tests that must count connections without interference, or
stop a server, start their own with the ``server_factory`` fixture (about a second each;
stopped at the test's end).

This directory is on sys.path for the tests (pytest's rootdir conftest), so test modules
can import helpers from it (``tq_support``).
"""

import pytest


def start_server_or_skip():
    """A started DisposableServer, or a skip naming the missing server binary."""
    from trace_quit.workloads.server import DisposableServer, ServerError, find_server_binary

    try:
        find_server_binary()
    except ServerError as e:
        pytest.skip(str(e))
    return DisposableServer().start()


@pytest.fixture(scope="session")
def server():
    s = start_server_or_skip()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def server_factory():
    """``start()`` -> a new started DisposableServer, stopped when the test ends."""
    started = []

    def start():
        s = start_server_or_skip()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


# Where every capability must be present (scripts/test sets TRACE_QUIT_NO_SKIP=1: this
# machine and CI), a skip is a failure that names what was missing — never a silent pass.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _no_skips():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "skipped, but TRACE_QUIT_NO_SKIP=1 requires every capability here: %s" % reason


# --- the CPython matrix: every supported CPython this machine has ---------------------------
# Tests parametrized with tq_support.cpython_param(version) run for each version present
# (pyenv's, or the distribution's /usr/bin/python3.X); a version this machine does not have
# is left out -- not skipped, which strict mode would count as a failure -- and the summary
# says which versions ran. $TQ_REQUIRE_CPYTHONS (e.g. on a CI image known to carry pyenv's
# 3.8-3.13) keeps the listed versions in even when absent, so their tests fail.

def pytest_configure(config):
    config.addinivalue_line("markers", "cpython(version): runs once per CPython present on this machine")
    _own_temp_root(config)


# --- each test run owns its temp root ------------------------------------------------------
# Other suites run on this machine at the same time: every disposable server of this run
# (the fixtures', and those the workloads start in subprocesses, which inherit the variable)
# lives under a directory only this run uses, so a test that looks for leftovers looks only
# at its own. scripts/test sets TQ_SERVER_TMPDIR itself (and pytest's --basetemp under it).

def _own_temp_root(config):
    import os
    import tempfile

    if os.environ.get("TQ_SERVER_TMPDIR") or hasattr(config, "workerinput"):
        return
    root = tempfile.mkdtemp(prefix="tq-run-", dir="/tmp")  # short: sockets live below it
    os.chmod(root, 0o711)  # each server's own directory inside is 0700
    os.environ["TQ_SERVER_TMPDIR"] = root
    config._tq_temp_root = root


def pytest_unconfigure(config):
    import shutil

    root = getattr(config, "_tq_temp_root", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import tq_support

    present = tq_support.cpython_matrix()
    required = set(tq_support.required_cpythons())
    keep, absent = [], []
    for item in items:
        mark = item.get_closest_marker("cpython")
        if mark is not None and mark.args[0] not in present and mark.args[0] not in required:
            absent.append(item)
        else:
            keep.append(item)
    if absent:
        config.hook.pytest_deselected(items=absent)
        items[:] = keep
    config._tq_cpython_absent = sorted({i.get_closest_marker("cpython").args[0] for i in absent},
                                       key=lambda v: tuple(map(int, v.split("."))))


_CPYTHON_RESULTS = {}


def pytest_runtest_logreport(report):
    import re

    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        m = re.search(r"\bpy(3\.\d+)\b", report.nodeid)
        if m:
            _CPYTHON_RESULTS.setdefault(m.group(1), []).append(report.outcome)


def pytest_terminal_summary(terminalreporter, config):
    """Which CPython versions the matrix covered (scripts/test's summary names them)."""
    import tq_support

    present = tq_support.cpython_matrix()
    parts = []
    for version in tq_support.AGENT_VERSIONS:
        outcomes = _CPYTHON_RESULTS.get(version)
        if not outcomes:
            continue
        path, kind = present.get(version, ("absent", "required"))
        passed = outcomes.count("passed")
        failed = ", %d failed" % (len(outcomes) - passed) if len(outcomes) != passed else ""
        parts.append("%s (%s: %d passed%s)" % (version, kind, passed, failed))
    absent = getattr(config, "_tq_cpython_absent", [])
    if parts or absent:
        terminalreporter.write_line("CPython matrix: %s%s" % (
            ", ".join(parts) if parts else "no version-matrix test ran",
            "; not on this machine: %s" % " ".join(absent) if absent else ""))


def _no_skips():
    import os

    return os.environ.get("TRACE_QUIT_NO_SKIP", "0") not in ("", "0")
