"""The in-process agent against a real server, through the real CLI (--no-bpf: no root needed).

known-causes closes connections by known causes in prime counts (7 close() from a worker
thread, 11 refcount, 5 gc gen 0, 13 gc gen 2, then inside an atexit handler 2 refcount and 3
gc gen 2, and 3 at shutdown): every Python the project
supports must report exactly those.
"""

import collections
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tq_support import (AGENT_VERSIONS, KNOWN_CAUSES, KNOWN_CAUSES_TOTAL, destroy_causes, kinds, load_events,
                        pyenv_has, run_traced, venv_python_for)

pytestmark = pytest.mark.server

#: What the agent reports as destroyed (explicit closes are conn_close events, not destructions).
DESTROYED = {key: n for key, n in KNOWN_CAUSES.items() if key[0] != "explicit_close"}


@pytest.mark.parametrize("version", AGENT_VERSIONS)
def test_known_causes_exact_counts_on_every_python(version, server, tmp_path):
    if not pyenv_has(version):
        pytest.skip("pyenv has no Python %s on this machine" % version)
    python = venv_python_for(version)
    assert os.path.exists(python), "scripts/setup.sh did not build the test venv for %s" % version
    proc, capture = run_traced(tmp_path, [python, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_socket])
    assert proc.returncode == 0, proc.stderr
    cap = load_events(capture)
    assert not cap.truncated
    events = cap.events
    start = [e for e in events if e["k"] == "agent_start"]
    assert start and start[0]["python"].startswith(version + ".")
    counts = kinds(events)
    assert counts["conn_open"] == KNOWN_CAUSES_TOTAL
    assert counts["conn_close"] == 7
    assert destroy_causes(events) == DESTROYED
    # The explicit closes came from the worker thread, named in their stack.
    main_tid = start[0]["tid"]
    closes = [e for e in events if e["k"] == "conn_close"]
    assert all(e["tid"] != main_tid for e in closes)
    assert all(re.search(r"known_causes\.py:\d+ in closer$", e["stack"][0]) for e in closes)
    # Each destroyed connection was opened, and its MYSQL* is id + basicsize (16 here).
    opened = {e["conn"] for e in events if e["k"] == "conn_open"}
    assert {e["conn"] for e in events if e["k"] == "conn_destroy"} <= opened
    assert start[0]["basicsize"] == 16
    # The generation-2 destructions happened in two collections (the program's, then the atexit
    # handler's), each reported with its stop.
    gen2 = collections.Counter(e["cid"] for e in events if e["k"] == "conn_destroy" and e["gen"] == 2)
    assert sorted(gen2.values()) == [3, 13]
    stops = {e["cid"]: e for e in events if e["k"] == "gc_stop" and e["cid"] in gen2}
    assert len(stops) == 2 and all(stops[cid]["collected"] >= n * 2 for cid, n in gen2.items())


def test_tcp_and_socket_give_the_same_counts(server, tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    events = load_events(capture).events
    assert kinds(events)["conn_close"] == 7
    assert destroy_causes(events) == DESTROYED
    opens = [e for e in events if e["k"] == "conn_open"]
    assert all(e["host"] == "127.0.0.1" and e["port"] == server.port for e in opens)


def test_no_password_in_capture(server, tmp_path):
    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "known-causes",
                                          "--dsn", server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    with open(capture) as f:
        text = f.read()
    assert server.password not in text
    assert "***" in text  # the DSN in argv was redacted, not dropped


def _write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_program_output_is_untouched_and_existing_sitecustomize_still_runs(server, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = '1'\n")
    prog = _write(tmp_path, "prog.py", """
        import os, sys, MySQLdb
        from trace_quit.workloads import dsn
        conn = MySQLdb.connect(**dsn.parse(sys.argv[1]))
        conn.close()
        print("sitecustomize:", os.environ.get("USER_SITECUSTOMIZE_RAN"))
        print("path has bootstrap:", any("bootstrap" in p for p in sys.path))
        sys.stderr.write("to stderr\\n")
    """)
    env = dict(os.environ, PYTHONPATH=str(site))
    plain = subprocess.run([sys.executable, prog, server.dsn_tcp], capture_output=True, text=True, env=env)
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp], env=env)
    assert plain.stdout == "sitecustomize: 1\npath has bootstrap: False\n"
    events = load_events(capture).events
    assert kinds(events)["conn_close"] == 1
    # The program's own output, exactly; the tracer adds nothing to stdout.
    assert proc.stdout == plain.stdout
    assert proc.stderr.startswith("to stderr\n")


def test_fork_and_spawned_children_are_traced(server, tmp_path):
    prog = _write(tmp_path, "family.py", """
        import os, subprocess, sys, MySQLdb
        from trace_quit.workloads import dsn
        kw = dsn.parse(sys.argv[1])
        MySQLdb.connect(**kw).close()                       # parent: close
        pid = os.fork()
        if pid == 0:
            c = MySQLdb.connect(**kw); del c                # forked child: refcount
            os._exit(0)
        os.waitpid(pid, 0)
        subprocess.run([sys.executable, "-c",
            "import MySQLdb, sys; from trace_quit.workloads import dsn; "
            "c = MySQLdb.connect(**dsn.parse(sys.argv[1])); c.close()", sys.argv[1]], check=True)
    """)
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    events = load_events(capture).events
    pids = {e["pid"] for e in events if e["k"] == "conn_open"}
    assert len(pids) == 3
    forked = [e for e in events if e["k"] == "agent_start" and e.get("forked_from")]
    assert len(forked) == 1
    assert destroy_causes(events) == {("refcount", None): 1}
    assert kinds(events)["conn_close"] == 2


def test_cleared_gc_callbacks_make_destroys_unknown_not_refcount(server, tmp_path):
    prog = _write(tmp_path, "clear.py", """
        import gc, sys, MySQLdb
        from trace_quit.workloads import dsn
        gc.disable()
        gc.callbacks.clear()
        class H:
            def __init__(self, c): self.c = c; self.me = self
        H(MySQLdb.connect(**dsn.parse(sys.argv[1])))
        gc.collect()
    """)
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    assert destroy_causes(load_events(capture).events) == {("unknown", None): 1}


def test_agent_without_a_tracer_stays_out_of_the_way(tmp_path):
    from trace_quit.tracer import agent

    env = agent.child_env(os.environ, str(tmp_path / "no-such-fifo"))
    proc = subprocess.run([sys.executable, "-c", "import gc; gc.collect(); print('ok')"],
                          capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


def test_engine_per_call_ties_every_connection_to_the_create_engine_line(server, tmp_path):
    from trace_quit.workloads import engine_per_call

    proc, capture = run_traced(tmp_path, [sys.executable, "-m", "trace_quit.workloads", "engine-per-call",
                                          "--dsn", server.dsn_tcp, "--tasks", "24", "--workers", "6",
                                          "--task-seconds", "0", "0.2", "--hold-seconds", "0.05"])
    assert proc.returncode == 0, proc.stderr
    events = load_events(capture).events
    source = engine_per_call.__file__
    line = _create_engine_line(source)
    engines = {e["engine"]: e for e in events if e["k"] == "engine_create"}
    assert len(engines) == 24
    assert {e["site"] for e in engines.values()} == {"%s:%d in get_db_session" % (source, line)}
    connects = {e["conn"]: e["engine"] for e in events if e["k"] == "pool" and e["ev"] == "connect"}
    opens = [e["conn"] for e in events if e["k"] == "conn_open"]
    assert len(opens) == 24
    assert all(connects.get(conn) in engines for conn in opens)


def _create_engine_line(path):
    with open(path) as f:
        in_func = False
        for number, text in enumerate(f, 1):
            if text.lstrip().startswith("def get_db_session"):
                in_func = True
            elif in_func and "create_engine(" in text:
                return number
    raise AssertionError("no create_engine( line in get_db_session of %s" % path)
