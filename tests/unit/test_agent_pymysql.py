"""The agent's PyMySQL hooks without a server: keys, records, and unhooking.

The Agent is a recording stand-in (test double); the PyMySQL classes are the real ones, with
a socketpair as the connection's socket (``defer_connect=True`` leaves it unconnected).
"""

import importlib.util
import os
import socket

import pytest

pymysql_connections = pytest.importorskip("pymysql.connections")

AGENT_PYMYSQL = os.path.join(os.path.dirname(__file__), "..", "..", "tracer", "agent", "pymysql.py")


def load_hooks():
    spec = importlib.util.spec_from_file_location("_tq_agent_pymysql_under_test", AGENT_PYMYSQL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingAgent:
    """Just the Agent API the hooks use; every record goes to ``records``."""

    from trace_quit.tracer import events as ev

    def __init__(self):
        self.records = []
        self.cause = ("refcount", None, None)

    def emit(self, kind, **fields):
        self.records.append(dict(fields, k=kind))

    emit_now = emit

    def classify(self):
        return self.cause

    def stack(self, skip):
        return ["here"]

    def thread_name(self):
        return "MainThread"


@pytest.fixture
def hooked():
    hooks = load_hooks()
    agent = RecordingAgent()
    hooks.hook(agent, pymysql_connections)
    yield hooks, agent
    hooks.unhook(pymysql_connections)


def _connection(hooks, agent):
    """A Connection whose socket is one end of a socketpair, registered as the hooked connect() would."""
    conn = pymysql_connections.Connection(defer_connect=True)
    ours, theirs = socket.socketpair()
    conn._sock, conn._rfile = ours, ours.makefile("rb")
    conn._current_timeout = conn._write_timeout = None  # as connect() leaves them
    agent.pymysql.on_connect(conn)
    return conn, ours, theirs


def test_destroyed_open_connection_sends_nothing_and_is_keyed_by_inode(hooked):
    hooks, agent = hooked
    conn, ours, theirs = _connection(hooks, agent)
    ino = os.fstat(ours.fileno()).st_ino
    opened = [r for r in agent.records if r["k"] == "conn_open"]
    assert opened[0]["conn"] == ino and opened[0]["driver"] == "pymysql" and opened[0]["fd"] == ours.fileno()
    del conn, ours
    destroyed = [r for r in agent.records if r["k"] == "conn_destroy"]
    assert destroyed == [dict(destroyed[0], conn=ino, cause="refcount", quit=False, driver="pymysql")]
    theirs.settimeout(2)
    assert theirs.recv(16) == b""  # closed, and no COM_QUIT went out first


def test_close_sends_com_quit_and_is_one_conn_close(hooked):
    hooks, agent = hooked
    conn, ours, theirs = _connection(hooks, agent)
    conn.close()
    theirs.settimeout(2)
    assert theirs.recv(16) == b"\x01\x00\x00\x00\x01"
    assert [r["k"] for r in agent.records] == ["module", "conn_open", "conn_close"]
    del conn  # the later destruction of a closed connection is no second end
    assert [r["k"] for r in agent.records][-1] == "conn_close"


def test_unhook_restores_the_original_methods():
    hooks = load_hooks()
    cls = pymysql_connections.Connection
    names = ("connect", "close", "_force_close", "__del__")
    before = {n: cls.__dict__[n] for n in names}
    hooks.hook(RecordingAgent(), pymysql_connections)
    assert all(cls.__dict__[n] is not before[n] for n in names)
    hooks.unhook(pymysql_connections)
    assert {n: cls.__dict__[n] for n in names} == before
    assert "_trace_quit_hooked" not in cls.__dict__
