"""Fork inheritance: a child's handle on a connection its parent opened is a copy of that life.

One server connection counts once (opened, by_cause, live curve, engines): by the first of
its handles' ends; the other handles' ends are listed as copies (``fork_copies``).
"""

import gzip
import json
import os
import tempfile

import pytest

from trace_quit.analysis import build_report, load, render
from synth import SynthCapture
from trace_quit.tracer import events as ev

CHILD, GRANDCHILD = 5151, 6161


def report_of(path):
    return build_report(load(str(path)))


def fork_finding(r):
    return [f for f in r.findings if "shared by forked processes" in f.title]


@pytest.mark.parametrize("layers", [("agent", "bpf"), ("agent",), ("bpf",)], ids=["both", "agent-only", "bpf-only"])
def test_child_closes_first_counts_once_by_the_childs_end(tmp_path, layers):
    s = SynthCapture(str(tmp_path / "f.tq"), layers=layers)
    a, b = s.open(0.1), s.open(0.2)
    s.fork(1.0, CHILD)
    s.close(2.0, a, ev.SHUTDOWN, pid=CHILD)           # the child's interpreter shutdown: COM_QUIT
    s.exit(2.1, CHILD)
    s.close(3.0, a, ev.EXPLICIT_CLOSE)                # the parent's handle, later
    s.close(3.5, b, ev.EXPLICIT_CLOSE)
    s.finish(4.0)
    r = report_of(s.path)
    c = r.connections
    assert c.opened == 2 and c.opened_before_capture == 0
    assert c.forked == 1 and c.fork_copies == 1
    assert r.com_quit.by_cause["shutdown"] == 1 and r.com_quit.by_cause["explicit_close"] == 1
    assert c.com_quit == 2 and sum(r.com_quit.by_cause.values()) == 2
    assert c.max_live == 2
    # Live: 2 until the child's COM_QUIT ended `a` on the server, then 1, then 0.
    assert [v for _, v in r.timeline.live][-2:] == [1, 0]
    assert [p[0] for p in r.timeline.live if p[1] == 1][-1] == pytest.approx(2.0, abs=0.001)
    quits = [(q.pid, q.cause, q.counted, q.inherited_from, q.counted_pid) for q in r.quits]
    assert quits == [(CHILD, "shutdown", True, s.pid, None),
                     (s.pid, "explicit_close", False, None, CHILD),
                     (s.pid, "explicit_close", True, None, None)]
    [f] = fork_finding(r)
    assert f.severity == "warning" and f.count == 1
    assert f.title == "1 connection was shared by forked processes and ended in more than one"
    assert "2 handles" in f.evidence and "In 1 connection, the first end came from a child" in f.evidence
    assert "engine.dispose(close=False)" in f.fix
    doc = json.loads(render(r, "json"))
    assert doc["connections"]["forked"] == 1 and doc["connections"]["fork_copies"] == 1
    assert [q["counted"] for q in doc["quits"]] == [True, False, True]
    assert doc["quits"][0]["inherited_from"] == s.pid and doc["quits"][1]["counted_pid"] == CHILD


def test_parent_closes_first_child_copy_not_counted(tmp_path):
    s = SynthCapture(str(tmp_path / "p.tq"))
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.close(2.0, a, ev.EXPLICIT_CLOSE)
    s.close(3.0, a, ev.REFCOUNT, pid=CHILD)
    s.finish(4.0)
    r = report_of(s.path)
    assert r.connections.opened == 1 and r.connections.fork_copies == 1
    assert r.com_quit.by_cause["explicit_close"] == 1 and r.com_quit.by_cause["refcount"] == 0
    assert [(q.pid, q.counted) for q in r.quits] == [(s.pid, True), (CHILD, False)]
    [f] = fork_finding(r)
    assert "In 0 connections, the first end came from a child" in f.evidence


def test_child_that_never_touches_the_connection_changes_nothing(tmp_path):
    # multiprocessing workers end with os._exit: no handle of theirs ever ends.
    s = SynthCapture(str(tmp_path / "n.tq"))
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.exit(1.5, CHILD)
    s.close(2.0, a, ev.EXPLICIT_CLOSE)
    s.finish(3.0)
    r = report_of(s.path)
    assert r.connections.opened == 1 and r.connections.forked == 0 and r.connections.fork_copies == 0
    assert r.com_quit.by_cause["explicit_close"] == 1 and not fork_finding(r)


def test_connection_opened_after_the_fork_is_not_inherited(tmp_path):
    # The parent closes `a` after the fork and a new connection reuses its address; the child
    # still holds the old object: its close is a copy of the life open at the fork.
    s = SynthCapture(str(tmp_path / "r.tq"))
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.close(1.5, a, ev.EXPLICIT_CLOSE)
    s.open(1.6, conn=a)
    s.close(2.0, a, ev.SHUTDOWN, pid=CHILD)
    s.close(2.5, a, ev.EXPLICIT_CLOSE)
    s.finish(3.0)
    r = report_of(s.path)
    assert r.connections.opened == 2 and r.connections.fork_copies == 1
    assert r.com_quit.by_cause["explicit_close"] == 2 and r.com_quit.by_cause["shutdown"] == 0
    child = [q for q in r.quits if q.pid == CHILD]
    assert len(child) == 1 and not child[0].counted and child[0].opened_t_s == pytest.approx(0.1, abs=0.001)
    # A connection closed before the fork is not inherited either: the child's close is unknown-origin.
    s2 = SynthCapture(str(tmp_path / "r2.tq"))
    b = s2.open(0.1)
    s2.close(0.5, b, ev.EXPLICIT_CLOSE)
    s2.fork(1.0, CHILD)
    s2.close(2.0, b, ev.REFCOUNT, pid=CHILD)
    s2.finish(3.0)
    r2 = report_of(s2.path)
    assert r2.connections.forked == 0 and r2.connections.opened_before_capture == 1


@pytest.mark.parametrize("layers", [("agent", "bpf"), ("agent",), ("bpf",)], ids=["both", "agent-only", "bpf-only"])
def test_grandchild_inherits_through_a_child_that_never_touched_it(tmp_path, layers):
    s = SynthCapture(str(tmp_path / "g.tq"), layers=layers)
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.fork(2.0, GRANDCHILD, parent=CHILD)
    s.close(3.0, a, ev.GC, gen=2, cid=1, pid=GRANDCHILD)
    s.close(4.0, a, ev.EXPLICIT_CLOSE)
    s.finish(5.0)
    r = report_of(s.path)
    assert r.connections.opened == 1 and r.connections.opened_before_capture == 0
    assert r.com_quit.by_cause["gc"] == 1 and r.connections.fork_copies == 1
    first = r.quits[0]
    assert first.pid == GRANDCHILD and first.counted and first.inherited_from == s.pid


def test_parent_never_closed_child_closes_later(tmp_path):
    # The parent dies with os._exit (its fd closes, the child's stays): the child's COM_QUIT ends it.
    s = SynthCapture(str(tmp_path / "x.tq"))
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.exit(2.0, s.pid)
    s.close(3.0, a, ev.EXPLICIT_CLOSE, pid=CHILD)
    s.finish(4.0)
    r = report_of(s.path)
    assert r.com_quit.by_cause["explicit_close"] == 1 and r.com_quit.by_cause["never_closed"] == 0
    assert r.connections.never_closed == 0 and r.connections.fork_copies == 1
    assert [(q.pid, q.cause, q.counted) for q in r.quits] == [(s.pid, "never_closed", False),
                                                              (CHILD, "explicit_close", True)]


def test_child_server_evidence_uses_the_parents_connect(tmp_path):
    # The child's mysql_close sends nothing: the connect (in the parent) succeeded, so: server.
    s = SynthCapture(str(tmp_path / "s.tq"))
    a = s.open(0.1)
    s.fork(1.0, CHILD)
    s.close(2.0, a, ev.EXPLICIT_CLOSE, pid=CHILD, send=False)
    s.finish(3.0)
    r = report_of(s.path)
    q, parent = r.quits  # the parent's handle: never closed, a copy
    assert q.pid == CHILD and q.cause == "server" and q.evidence == ["kernel_not_sent"] and q.counted
    assert parent.cause == "never_closed" and not parent.counted
    assert r.com_quit.by_cause["server"] == 1 and r.com_quit.by_cause["never_closed"] == 0


def test_inherited_pool_keeps_its_engine_and_site(tmp_path):
    s = SynthCapture(str(tmp_path / "e.tq"))
    engine = s.engine(0.05)
    a = s.open(0.1, engine=engine)
    s.pool(0.5, engine, "checkin", a)
    s.fork(1.0, CHILD)
    s.pool(1.5, engine, "checkout", a, pid=CHILD)
    s.pool(1.6, engine, "checkin", a, pid=CHILD)
    s.dispose(1.7, engine)
    s.close(2.0, a, ev.REFCOUNT, pid=CHILD)
    c2 = s.open(2.1, engine=engine, pid=CHILD)       # the child's copy of the pool opens a new one
    s.close(2.2, c2, ev.EXPLICIT_CLOSE, pid=CHILD)
    s.close(3.0, a, ev.EXPLICIT_CLOSE)
    s.finish(4.0)
    r = report_of(s.path)
    [site] = r.engines
    assert site.call_site == "config/database.py:22 in get_db_session"
    assert site.created == 1 and site.connections == 2
    assert site.connections_by_cause == {"refcount": 1, "explicit_close": 1}
    assert r.connections.opened == 2 and r.connections.fork_copies == 1
    assert [q.engine_site for q in r.quits] == ["config/database.py:22 in get_db_session"] * 3


def test_fork_recorded_only_by_the_agent_after_the_parent_closed(tmp_path):
    # Without the kernel, the fork time is the child's agent_start: a connection the parent closed
    # just before it is not inherited.
    s = SynthCapture(str(tmp_path / "a.tq"), layers=("agent",))
    a, b = s.open(0.1), s.open(0.2)
    s.close(0.9, b, ev.EXPLICIT_CLOSE)
    s.fork(1.0, CHILD)
    s.close(2.0, a, ev.SHUTDOWN, pid=CHILD)
    s.close(3.0, a, ev.EXPLICIT_CLOSE)
    s.finish(4.0)
    r = report_of(s.path)
    assert r.connections.opened == 2 and r.connections.forked == 1 and r.connections.fork_copies == 1
    assert r.com_quit.by_cause == {**{c: 0 for c in ev.CAUSES}, "explicit_close": 1, "shutdown": 1}


def test_agent_fork_time_is_late_the_childs_close_still_inherits(tmp_path):
    # Agent only: the fork is known at the child's agent_start, 0.3 ms after it; the parent
    # closed `a` in between. The child only reports connections it holds: a copy of `a`.
    s = SynthCapture(str(tmp_path / "l.tq"), layers=("agent",))
    a = s.open(0.1)
    s.fork(1.0, CHILD)                                  # agent_start at 1.0003
    s.close(1.0001, a, ev.EXPLICIT_CLOSE)
    s.close(2.0, a, ev.SHUTDOWN, pid=CHILD)
    s.finish(3.0)
    r = report_of(s.path)
    assert r.connections.opened == 1 and r.connections.opened_before_capture == 0
    assert r.connections.fork_copies == 1 and r.com_quit.by_cause["explicit_close"] == 1
    assert r.com_quit.by_cause["shutdown"] == 0


def test_the_report_groups_connection_ends_by_process():
    """A service's master and workers (or a forked child) each get a row: every counted end once,
    under the process whose end counts, with the parent that forked it (issue 17)."""
    data = os.path.join(os.path.dirname(__file__), "data", "server-and-fork.tqcap.gz")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sf.tqcap")
        with open(path, "wb") as f:
            f.write(gzip.open(data).read())
        r = build_report(load(path))
    root = r.program.pid
    assert [(p["pid"] == root, p["parent"], p["connections"], p["by_cause"]) for p in r.processes] == [
        (True, None, 7, {"server": 4, "explicit_close": 3}),
        (False, root, 1, {"explicit_close": 1}),
        (False, root, 1, {"shutdown": 1})]
    assert sum(p["connections"] for p in r.processes) == sum(1 for q in r.quits if q.counted)
    text = render(r, "text")
    assert "PROCESSES" in text and "%8d  %8d  %11d  shutdown 1" % (r.processes[2]["pid"], root, 1) in text
