"""Only the traced process tree is seen: forks and execs are followed, other processes are not."""

import collections
import subprocess

import pytest

from bpf_harness import trace_command
from tq_support import VENV_PY

pytestmark = [pytest.mark.bpf, pytest.mark.server]

# The parent closes 2 connections, a forked child 3, and a grandchild that the child
# execs into another interpreter closes 5: 10 in all, each with its own pid.
PROG = r"""
import os, sys, MySQLdb
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
def closes(n):
    for _ in range(n):
        MySQLdb.connect(**kw).close()
pid = os.fork()
if pid == 0:
    closes(3)
    g = os.fork()
    if g == 0:
        os.execv(sys.executable, [sys.executable, "-c",
                 "import MySQLdb, sys; from trace_quit.workloads import dsn\n"
                 "for _ in range(5): MySQLdb.connect(**dsn.parse(sys.argv[1])).close()", sys.argv[1]])
    os.waitpid(g, 0)
    print("pids", os.getpid(), g, flush=True)
    os._exit(0)
closes(2)
os.waitpid(pid, 0)
print("parent", os.getpid(), flush=True)
"""

UNRELATED = r"""
import sys, MySQLdb
from trace_quit.workloads import dsn
for _ in range(int(sys.argv[2])):
    MySQLdb.connect(**dsn.parse(sys.argv[1])).close()
"""


def test_forks_and_execs_are_followed_and_nothing_else_is_seen(bpf_server, tmp_path):
    out = str(tmp_path / "out")
    unrelated = []

    def start_unrelated(_session):
        # Same interpreter, same libraries, running while we trace: must not appear.
        unrelated.append(subprocess.Popen([VENV_PY, "-c", UNRELATED, bpf_server.dsn_socket, "200"]))

    run = trace_command([VENV_PY, "-c", PROG, bpf_server.dsn_socket], output_path=out, on_attached=start_unrelated)
    unrelated[0].wait(timeout=120)
    assert run.status == 0, run.output
    child, grandchild = [int(x) for x in run.output.split("pids")[1].split()[:2]]
    by_pid = collections.Counter(e["pid"] for e in run.of("bpf_close"))
    assert by_pid == {run.pid: 2, child: 3, grandchild: 5}
    assert unrelated[0].pid not in {e.get("pid") for e in run.events}
    forks = {(e["pid"], e["child"]) for e in run.of("bpf_fork")}
    assert (run.pid, child) in forks and (child, grandchild) in forks
    assert {e["pid"] for e in run.of("bpf_exit")} >= {run.pid, child, grandchild}
    assert run.close_causes() == {("explicit_close", None): 10}
    assert run.wire_states() == {"confirmed": 10}
