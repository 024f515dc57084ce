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


def _no_skips():
    import os

    return os.environ.get("TRACE_QUIT_NO_SKIP", "0") not in ("", "0")
