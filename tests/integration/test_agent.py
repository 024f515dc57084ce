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
import time

import pytest

from tq_support import (AGENT_VERSIONS, KNOWN_CAUSES, KNOWN_CAUSES_TOTAL, cpython_param, destroy_causes, kinds,
                        load_events, run_traced, venv_python_for)

pytestmark = pytest.mark.server

#: What the agent reports as destroyed (explicit closes are conn_close events, not destructions).
DESTROYED = {key: n for key, n in KNOWN_CAUSES.items() if key[0] != "explicit_close"}


@pytest.mark.parametrize("version", [cpython_param(v) for v in AGENT_VERSIONS])
def test_known_causes_exact_counts_on_every_python(version, server, tmp_path):
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
    # Each written collection says what set it off: gc.get_count() in its "start" callback.
    gc_starts = [e for e in events if e["k"] == "gc_start"]
    assert gc_starts and all(len(e["counts"]) == 3 and all(type(n) is int for n in e["counts"]) for e in gc_starts)
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
    # Counted, not keyed by id: a collected Engine's address may be taken by a later one (seen
    # once on Debian 13, 23 distinct ids for 24 Engines).
    creates = [e for e in events if e["k"] == "engine_create"]
    assert len(creates) == 24
    engines = {e["engine"] for e in creates}
    assert {e["site"] for e in creates} == {"%s:%d in get_db_session" % (source, line)}
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


def _program_stderr(proc):
    """The traced program's stderr: the tracer's own closing lines ("trace-quit: ...") removed."""
    lines = proc.stderr.splitlines(True)
    if lines and lines[-1].startswith("trace-quit: "):
        while lines and lines[-1].startswith("trace-quit: "):
            lines.pop()
        if lines and lines[-1] == "\n":
            lines.pop()  # the blank line the tracer puts before them
    return "".join(lines)


def _untraced(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


#: Pythons whose os.fork() warns about threads (3.12+): the agent must have none.
FORK_WARNING_VERSIONS = ("3.12", "3.13", "3.14", "3.15")


@pytest.mark.parametrize("version", [cpython_param(v) for v in FORK_WARNING_VERSIONS])
def test_no_thread_of_ours_and_no_fork_warning(version, server, tmp_path):
    python = venv_python_for(version)
    assert os.path.exists(python), "scripts/setup.sh did not build the test venv for %s" % version
    prog = _write(tmp_path, "forker.py", """
        import os, sys, threading, MySQLdb
        from trace_quit.workloads import dsn
        MySQLdb.connect(**dsn.parse(sys.argv[1])).close()
        print([t.name for t in threading.enumerate()], threading.active_count())
        pid = os.fork()
        if pid == 0:
            MySQLdb.connect(**dsn.parse(sys.argv[1])).close()
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    argv = [python, "-W", "always::DeprecationWarning", prog, server.dsn_tcp]
    plain = _untraced(argv)
    proc, capture = run_traced(tmp_path, argv)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "['MainThread'] 1\n", "")
    assert (proc.returncode, proc.stdout, _program_stderr(proc)) == (0, plain.stdout, "")
    events = load_events(capture).events
    # The agent was there in both processes (the child's close went out through os._exit).
    assert len([e for e in events if e["k"] == "agent_start"]) == 2
    assert kinds(events)["conn_close"] == 2


@pytest.mark.parametrize("version", ["system", cpython_param("3.8"), cpython_param("3.13")])
def test_close_adds_no_frame_to_the_programs_traceback(version, server, tmp_path):
    # A second close() raises inside the C close; the program prints the traceback, the way
    # SQLAlchemy logs an error from inside close(). Traced, stderr must be byte-for-byte the same.
    prog = _write(tmp_path, "twice.py", """
        import logging, sys, traceback, MySQLdb
        from trace_quit.workloads import dsn
        conn = MySQLdb.connect(**dsn.parse(sys.argv[1]))
        conn.close()
        try:
            conn.close()
        except Exception:
            traceback.print_exc()
        logging.basicConfig(format="%(message)s")
        try:
            conn.close()
        except Exception:
            logging.getLogger("pool").error("Exception closing connection", exc_info=True)
    """)
    python = sys.executable
    if version != "system":
        python = venv_python_for(version)
    argv = [python, prog, server.dsn_tcp]
    plain = _untraced(argv)
    proc, capture = run_traced(tmp_path, argv)
    assert plain.returncode == 0 and plain.stderr.count("Traceback") == 2, plain.stderr
    assert (proc.returncode, proc.stdout, _program_stderr(proc)) == (plain.returncode, plain.stdout, plain.stderr)
    events = load_events(capture).events
    closes = [e for e in events if e["k"] == "conn_close"]
    assert len(closes) == 1 and re.search(r"twice\.py:5 in <module>$", closes[0]["stack"][0])


def test_program_that_reuses_the_agents_fds_is_never_written_to(server, tmp_path):
    # A daemon closes every fd above 2 and opens its own file and MySQL socket, which get the
    # numbers the agent's channel had. The agent must notice (fstat identity), re-open the FIFO
    # by path, and never write into the program's file or socket.
    prog = _write(tmp_path, "daemon.py", """
        import os, sys, time, MySQLdb
        from trace_quit.workloads import dsn
        kw = dsn.parse(sys.argv[1])
        MySQLdb.connect(**kw).close()
        os.closerange(3, 1024)
        own = open(sys.argv[2], "wb", buffering=0)      # the lowest free fd: the agent's old one
        keep = MySQLdb.connect(**kw)                    # its socket: the next old number
        print("fds", own.fileno(), keep.fileno() if hasattr(keep, "fileno") else "-")
        for i in range(40):
            MySQLdb.connect(**kw).close()
            c = MySQLdb.connect(**kw); del c
            own.write(b"line %d\\n" % i)
            cur = keep.cursor(); cur.execute("SELECT %s", (i,)); assert cur.fetchall() == ((i,),); cur.close()
            time.sleep(0.003)
        keep.close()
        print("ok")
    """)
    own = tmp_path / "own.txt"
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp, str(own)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("ok\n")
    assert own.read_bytes() == b"".join(b"line %d\n" % i for i in range(40))
    events = load_events(capture).events
    # Everything after the closerange still arrived, through the re-opened FIFO.
    assert kinds(events)["conn_open"] == 1 + 1 + 80
    assert kinds(events)["conn_close"] == 1 + 40 + 1
    assert destroy_causes(events) == {("refcount", None): 40}


def _raw_agent_run(tmp_path, source, timeout=60, hold=None):
    """Run ``source`` with the agent writing into a FIFO this test reads itself: its raw lines.
    ``hold``: a file the program creates; reading starts only 0.3 s after it appears."""
    import select

    from trace_quit.tracer import agent

    fifo = str(tmp_path / "channel")
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    prog = _write(tmp_path, "raw.py", source)
    env = agent.child_env(os.environ, fifo)
    child = subprocess.Popen([sys.executable, prog], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    data = []
    try:
        if hold is not None:
            deadline = time.monotonic() + timeout
            while not os.path.exists(hold) and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.01)
            time.sleep(0.3)
        while True:
            ready, _, _ = select.select([reader], [], [], 0.05)
            if ready:
                chunk = os.read(reader, 65536)
                data.append(chunk)
                if chunk or child.poll() is None:
                    if not chunk:
                        time.sleep(0.01)  # no writer yet
                    continue
            if child.poll() is not None:
                chunk = os.read(reader, 65536)
                if not chunk:
                    break
                data.append(chunk)
        out, err = child.communicate(timeout=timeout)
    finally:
        os.close(reader)
    return child.returncode, out.decode(), err.decode(), b"".join(data)


def test_every_line_fits_in_pipe_buf_and_is_cut_not_dropped(tmp_path):
    # Eight frames in a module whose path is ~1,500 characters: a stack of ~12 KB.
    deep = tmp_path
    for i in range(6):
        deep = deep / ("d%d" % i + "x" * 240)
    deep.mkdir(parents=True)
    (deep / "deepmod.py").write_text(textwrap.dedent("""
        def down(n, fn):
            if n == 0:
                return fn()
            return down(n - 1, fn)
    """))
    code, out, err, raw = _raw_agent_run(tmp_path, """
        import sys
        sys.path.insert(0, %r)
        import deepmod
        import _trace_quit_agent.runtime as runtime
        agent = runtime.AGENT
        # The connection path's own call, with the program's deep stack above it.
        deepmod.down(10, lambda: agent.emit("conn_close", conn=1, stack=agent.stack(0), thread="t"))
        agent.emit("pool", engine=1, ev="x" * 10000, conn=None)
        # The connection path's records are written as text (runtime.py OPEN_LINE): cut the same way.
        class Conn:
            pass
        conn = Conn()
        deepmod.down(10, lambda: agent.on_conn_open(conn, (), {"host": "h" * 3000}))
        print("ok")
    """ % str(deep))
    assert (code, out, err) == (0, "ok\n", ""), err
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    import json
    records = [json.loads(line) for line in lines[:-1]]
    assert all(len(line) + 1 <= 4096 for line in lines[:-1])
    close = [r for r in records if r["k"] == "conn_close"]
    pool = [r for r in records if r["k"] == "pool"]
    assert len(close) == 1 and len(pool) == 1
    stack = close[0]["stack"]
    assert len(stack) == 8 and stack[0].endswith("raw.py:8 in <lambda>")
    assert all(s.endswith("...") and len(s) <= 515 for s in stack[1:])
    assert pool[0]["ev"].startswith("xxx") and pool[0]["ev"].endswith("...")
    [opened] = [r for r in records if r["k"] == "conn_open"]
    # on_conn_open names its caller's caller (the frame above the Connection.__init__ wrapper).
    assert len(opened["stack"]) == 8 and all(s.endswith("...") and len(s) <= 515 for s in opened["stack"])
    assert opened["host"].startswith("hhh") and opened["host"].endswith("...") and len(opened["host"]) <= 515
    assert opened["src"] == "agent" and opened["thread"] == "MainThread"


def test_a_partial_write_never_leaves_a_torn_line(tmp_path):
    code, out, err, raw = _raw_agent_run(tmp_path, """
        import os
        import _trace_quit_agent.runtime as runtime
        agent = runtime.AGENT
        agent.flush()
        real = os.write
        agent.write = lambda fd, data: real(fd, data[:len(data) - 5])  # a short write, mid-line
        for i in range(10):
            agent._queue("pool", {"engine": i, "ev": "checkout", "conn": None})
        agent.flush()
        lost = agent.lost
        agent.write = real
        agent.emit("pool", engine=99, ev="after", conn=None)
        agent.flush()
        print(lost)
    """)
    assert code == 0, err
    lost = int(out)
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    import json
    good, torn = [], []
    for line in lines[:-1]:
        try:
            good.append(json.loads(line))
        except ValueError:
            torn.append(line)
    pools = [r for r in good if r["k"] == "pool"]
    # What went out whole is intact, the one cut line stands alone, the rest is counted.
    assert len(torn) == 1
    assert lost == 1 and len([r for r in pools if r["ev"] == "checkout"]) == 9
    assert pools[-1]["ev"] == "after"
    assert [r["n"] for r in good if r["k"] == "agent_lost"] == [lost]


def test_records_left_at_exit_wait_for_a_full_channel(tmp_path):
    # A process ending with more queued than the FIFO holds (a server's worker at shutdown,
    # the tracer busy): the last flush waits for room, bounded, instead of dropping them
    # silently; what it still cannot write is counted and said.
    hold = str(tmp_path / "at-exit")
    code, out, err, raw = _raw_agent_run(tmp_path, """
        import atexit, sys
        import _trace_quit_agent.runtime as runtime
        agent = runtime.AGENT

        def at_end():
            for i in range(3000):   # ~300 KB of records, queued: the FIFO holds 64 KB
                agent._queue("pool", {"engine": i, "ev": "checkout-" + str(i) + "x" * 40, "conn": None})
            open(%r, "w").close()

        atexit.register(at_end)   # runs before the agent's own handler (registered first)
    """ % hold, hold=hold)
    assert code == 0, err
    import json
    records = [json.loads(line) for line in raw.split(b"\n") if line]
    assert len([r for r in records if r["k"] == "pool"]) == 3000
    assert [r for r in records if r["k"] == "agent_lost"] == []


def test_stop_leaves_the_program_as_it_was(server, tmp_path):
    prog = _write(tmp_path, "detach.py", """
        import gc, os, posix, sys, MySQLdb
        from MySQLdb.connections import Connection
        from trace_quit.workloads import dsn
        import _trace_quit_agent.runtime as runtime
        kw = dsn.parse(sys.argv[1])
        MySQLdb.connect(**kw).close()
        agent = runtime.AGENT
        fds = (agent.fd, agent.keepalive_fd)
        before = (len(gc.callbacks), len(sys.meta_path))
        agent.stop()
        closed = []
        for fd in fds:
            try:
                os.fstat(fd)
            except OSError:
                closed.append(fd)
        print(before[0] - len(gc.callbacks), before[1] - len(sys.meta_path),
              "close" in Connection.__dict__, hasattr(Connection, "_trace_quit_hooked"),
              Connection.__init__.__module__, os.execv is posix.execv, os._exit is posix._exit,
              closed == list(fds))
        MySQLdb.connect(**kw).close()                   # no longer seen
        c = MySQLdb.connect(**kw); del c
    """)
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1 1 False False MySQLdb.connections True True True\n"
    events = load_events(capture).events
    assert kinds(events)["conn_open"] == 1 and kinds(events)["conn_close"] == 1
    assert destroy_causes(events) == {}


def test_events_before_exec_and_os_exit_are_written(server, tmp_path):
    # Both replace or end the process with no atexit: the buffer must go out first.
    prog = _write(tmp_path, "execer.py", """
        import os, sys, MySQLdb
        from trace_quit.workloads import dsn
        kw = dsn.parse(sys.argv[1])
        MySQLdb.connect(**kw).close()
        if os.fork() == 0:
            c = MySQLdb.connect(**kw); del c
            os._exit(0)
        os.wait()
        c = MySQLdb.connect(**kw); del c
        os.execl(sys.executable, sys.executable, "-c", "print('exec ok')")
    """)
    proc, capture = run_traced(tmp_path, [sys.executable, prog, server.dsn_tcp])
    assert (proc.returncode, proc.stdout) == (0, "exec ok\n"), proc.stderr
    events = load_events(capture).events
    assert kinds(events)["conn_open"] == 3 and kinds(events)["conn_close"] == 1
    assert destroy_causes(events) == {("refcount", None): 2}
