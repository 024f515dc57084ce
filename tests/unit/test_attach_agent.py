"""tracer/agent/attach.py on the agent runtime, without gdb: start, Engines seen once, stop undoes it.

The child loads the agent package by path as the --pid bootstrap does, attaches to itself, reads
its own FIFO and prints what the agent wrote. SQLite Engines: no server is needed to construct
an Engine (the pool connects lazily). The full injection is tests/system/test_attach.py.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trace_quit.tracer import agent as agent_pkg

pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed (the 'workloads' extra)")

# What both children do: load the agent package by path as the --pid bootstrap does (``attach``),
# and read everything the agent wrote into their FIFO (``data``).
LOAD_AGENT = """spec = importlib.util.spec_from_file_location(
    "_trace_quit_agent", os.path.join(agent_dir, "__init__.py"), submodule_search_locations=[agent_dir])
module = importlib.util.module_from_spec(spec)
sys.modules["_trace_quit_agent"] = module
spec.loader.exec_module(module)
attach = importlib.import_module("_trace_quit_agent.attach")"""
DRAIN_CHANNEL = """data = b""
while True:
    try:
        chunk = os.read(reader, 65536)
    except BlockingIOError:
        break
    if not chunk:
        break
    data += chunk"""


def _child(source):
    return textwrap.dedent(source).replace("LOAD_AGENT", LOAD_AGENT).replace("DRAIN_CHANNEL", DRAIN_CHANNEL)


CHILD = _child('''
    import importlib, importlib.util, json, os, sys
    agent_dir, fifo, when = sys.argv[1:4]
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    if when == "before":
        import sqlalchemy
        from sqlalchemy import create_engine
        existing = create_engine("sqlite://")
    LOAD_AGENT
    before = attach.inspect()
    status = attach.start(fifo)
    if when == "after":
        import sqlalchemy
        from sqlalchemy import create_engine
    during = attach.inspect()
    a = sqlalchemy.create_engine("sqlite://")   # through the module attribute
    b = create_engine("sqlite://")              # bound before attach
    a.execution_options(x=1)                    # an OptionEngine: shares a's pool, not an Engine
    b.dispose()
    stopped = attach.stop()
    c = create_engine("sqlite://")              # after detach: unseen
    after = attach.inspect()
    DRAIN_CHANNEL
    events = [json.loads(line) for line in data.decode().splitlines()]
    print(json.dumps({"status": status, "stopped": stopped, "before": before, "during": during,
                      "after": after, "events": events}))
''')


@pytest.mark.parametrize("when", ["before", "after"])  # SQLAlchemy imported before / after attach
def test_attach_sees_each_engine_once_and_stop_undoes_it(when, tmp_path):
    fifo = tmp_path / "channel"
    os.mkfifo(fifo, 0o600)
    child = tmp_path / "child.py"  # a file: call sites in "<string>" count as library frames
    child.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(child), agent_pkg.AGENT_DIR, str(fifo), when],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"]["ok"] and out["status"]["engines"] == (1 if when == "before" else 0), out["status"]
    assert out["stopped"] == {"ok": True, "attached": True}
    events = out["events"]
    start = [e for e in events if e["k"] == "agent_start"]
    assert len(start) == 1 and start[0]["attached"] is True and len(start[0]["gc_counts"]) == 3
    created = [e for e in events if e["k"] == "engine_create"]
    sites = [e["site"] for e in created]
    expected = ["%s:%d in <module>" % (child, line) for line in (21, 22)]
    assert sites == (["before attach"] + expected if when == "before" else expected), sites
    assert len([e for e in events if e["k"] == "engine_dispose"]) == 1
    # While attached: the Engine's __init__ is ours, create_engine is the program's own.
    during = out["during"]
    assert during["agent_running"] and during["gc_callbacks"]
    assert during["methods"]["Engine.__init__"]["file"].endswith("attach.py")
    assert during["methods"]["sqlalchemy.create_engine"] == out["after"]["methods"]["sqlalchemy.create_engine"]
    # Detached: everything as it was (the "after" import case had no SQLAlchemy methods before).
    after = out["after"]
    assert not after["agent_running"] and not after["gc_callbacks"] and not after["trace_quit_fds"]
    assert not after["threads"] and after["meta_path"] == out["before"]["meta_path"]
    if when == "before":
        assert after == out["before"]
    else:
        assert after["methods"]["Engine.__init__"]["file"].endswith("base.py")
        assert after["methods"]["Engine.dispose"]["file"].endswith("base.py")


PYMYSQL_CHILD = _child('''
    import importlib, importlib.util, json, os, socket, sys
    import pymysql
    agent_dir, fifo = sys.argv[1:3]
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    # Open before attach (a socket pair stands for the server: no server here), one closed
    # before attach, and one never connected.
    open_one = pymysql.connections.Connection(defer_connect=True)
    ours, theirs = socket.socketpair()
    open_one._sock = ours
    open_one._rfile = ours.makefile("rb")
    open_one._current_timeout = None              # what connect() would have set
    closed_one = pymysql.connections.Connection(defer_connect=True)
    LOAD_AGENT
    status = attach.start(fifo)
    again = attach.CURRENT.announce_existing()    # a second scan: nothing new
    open_one.close()                              # after attach: COM_QUIT, then the socket closes
    quit_bytes = theirs.recv(64).hex()
    attach.stop()
    DRAIN_CHANNEL
    print(json.dumps({"status": status, "again": list(again), "ino": os.fstat(theirs.fileno()).st_ino,
                      "quit": quit_bytes, "events": [json.loads(line) for line in data.decode().splitlines()]}))
''')


def test_attach_announces_a_pymysql_connection_open_before_it(tmp_path):
    pytest.importorskip("pymysql", reason="PyMySQL is not installed (the 'workloads' extra)")
    fifo = tmp_path / "channel"
    os.mkfifo(fifo, 0o600)
    child = tmp_path / "child.py"
    child.write_text(PYMYSQL_CHILD)
    proc = subprocess.run([sys.executable, str(child), agent_pkg.AGENT_DIR, str(fifo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"]["connections"] == 1, out["status"]
    assert out["again"] == [0, 0]
    assert out["quit"] == "0100000001"
    opens = [e for e in out["events"] if e["k"] == "conn_open"]
    assert len(opens) == 1
    o = opens[0]
    assert o["driver"] == "pymysql" and o["origin"] == "before attach" and o["before_attach"] is True
    assert o["stack"] == [] and o["thread"] == ""
    closes = [e for e in out["events"] if e["k"] == "conn_close"]
    assert len(closes) == 1 and closes[0]["conn"] == o["conn"] and closes[0]["quit"] is True
    assert [e for e in out["events"] if e["k"] == "conn_destroy"] == []
