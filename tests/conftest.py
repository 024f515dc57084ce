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
