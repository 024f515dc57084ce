"""issue 12: `trace-quit --pid` attached to a program that is inside a collection.

The program (pyenv's 3.11: GC brackets from gc_collect_main's entry and return) collects every
few allocations while it waits, so collections are entered while the probes are being placed.
Before the fix an entry seen before its return probe was placed opened a bracket that stayed
open forever and every later refcount close read as gc (6 of 6 tries in the issue). Now each of the program's refcount
closes after the attach must be refcount, and none server-ended, on every try.
"""

import json
import os
import subprocess
import time

import pytest

from tq_support import TRACE_QUIT, cpython_param, load_events, venv_python_for

pytestmark = [pytest.mark.bpf, pytest.mark.server]

DROPS = 6
TRIES = 2

BUSY = """
import gc, os, sys, time, MySQLdb
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
class Cycle:
    def __init__(self):
        self.me = self
gc.set_threshold(100)   # a collection every 100 allocations: one is entered at any moment of attach
                        # (at 1 the GC events alone outrun the ring buffer and records drop)
while not os.path.exists(sys.argv[2]):
    for _ in range(1000):
        Cycle()
for _ in range(%d):
    for _ in range(200):
        Cycle()                          # automatic collections keep running around the drops
    c = MySQLdb.connect(**kw)
    c.query("SELECT 1")
    c.store_result()
    del c                                # refcount: mysql_close from the dealloc, outside any collection
""" % DROPS


@pytest.mark.parametrize("version", [cpython_param(v) for v in ("3.8", "3.11", "3.13")])
@pytest.mark.parametrize("attempt", range(TRIES))
def test_refcount_after_attaching_mid_collection_is_refcount(server, tmp_path, attempt, version):
    python = venv_python_for(version)
    assert os.path.exists(python), "test venv %s missing: run scripts/setup.sh" % python
    go = tmp_path / "go"
    prog = tmp_path / "busy.py"
    prog.write_text(BUSY)
    program = subprocess.Popen([python, str(prog), server.dsn_socket, str(go)])
    try:
        time.sleep(0.5 + 0.3 * attempt)   # vary the moment of attach across tries
        capture = str(tmp_path / "pid.tqcap")
        tracer = subprocess.Popen(TRACE_QUIT + ["--pid", str(program.pid), "--quiet", "--format", "none",
                                                "-o", capture],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(capture) and b'"k":"child_start"' in open(capture, "rb").read():
                break
            time.sleep(0.05)
        time.sleep(0.3)   # a few collections inside the attached window, before the drops
        go.write_text("")
        assert program.wait(timeout=120) == 0
        _, err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, err
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    events = load_events(capture).events
    closes = [e for e in events if e["k"] == "bpf_close"]
    assert [(e["cause"], e["gen"]) for e in closes] == [("refcount", None)] * DROPS
    assert all(e["sock"] is True and e["eof"] is False for e in closes)
    assert any(e["k"] == "bpf_gc_start" for e in events)   # the brackets were live meanwhile
    assert [e for e in events if e["k"] == "bpf_stats"][-1]["dropped"] == 0
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    by_cause = {k: v for k, v in report["com_quit"]["by_cause"].items() if v}
    assert by_cause == {"refcount": DROPS}
    assert report["com_quit"]["wire"]["confirmed"] == DROPS


@pytest.mark.parametrize("version", [cpython_param(v) for v in ("3.11", "3.13")])
def test_bracket_ends_are_attached_before_their_beginnings(version):
    """An entry seen while attaching always has its return/done probe already in place."""
    from bpf_harness import trace_command

    python = venv_python_for(version)
    assert os.path.exists(python), "test venv %s missing: run scripts/setup.sh" % python
    run = trace_command([python, "-c", "import MySQLdb"])
    assert run.status == 0
    order = [(p["symbol"], p["how"], p["role"]) for p in run.describe["probes"] if p["how"] != "tracepoint"
             and p["how"] != "raw_tracepoint"]
    ends = [i for i, (_, how, role) in enumerate(order) if how == "uretprobe" or role == "gc_done"]
    begins = [i for i, (_, how, role) in enumerate(order) if i not in ends]
    assert {role for _, _, role in order} >= {"gc_start", "gc_done", "close", "close_ret", "connect", "connect_ret"}
    assert max(ends) < min(begins)
