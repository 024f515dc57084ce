"""The cause contract (analysis/attribute.py): verdicts from evidence, decided without side effects."""

import collections
import gzip
import os

from trace_quit.analysis.attribute import Context, attribute_all, decide
from trace_quit.analysis.capture import load
from trace_quit.analysis.join import join

DATA = os.path.join(os.path.dirname(__file__), "data")


def joined(tmp_path, name):
    path = tmp_path / name
    with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
        path.write_bytes(f.read())
    cap = load(str(path))
    j = join(cap.events, cap.header)
    end = j.child_exit[0]
    return j, Context(agent=True, bpf=True, wire=True, process_ended=lambda pid: j.exits.get(pid, end))


def test_decide_returns_verdicts_and_changes_nothing(tmp_path):
    j, ctx = joined(tmp_path, "known-causes.tqcap")
    verdicts = [decide(life, ctx) for life in j.lives if not life.failed]
    assert collections.Counter(v.cause for v in verdicts) == {
        "explicit_close": 7, "refcount": 11, "gc": 18, "shutdown": 3}
    assert collections.Counter(v.generation for v in verdicts if v.cause == "gc") == {0: 5, 2: 13}
    assert {v.wire for v in verdicts} == {"confirmed"}
    # Nothing was written into the join's objects: the report applies verdicts in one place.
    assert not any(hasattr(life, "cause") or hasattr(life, "verdict") for life in j.lives)  # evidence only


def test_attribute_all_counts_one_end_per_server_connection(tmp_path):
    j, ctx = joined(tmp_path, "server-and-fork.tqcap")
    att = attribute_all(j.lives, ctx)
    copies = [e for members in att.families.values() for e in members if e.copy_of and e.cause]
    assert att.failed == 0 and len(att.copies) == len(copies)
    assert len(att.ended) + att.open_at_end == len(att.counted)
    assert all(lf.copy_of is None for lf in att.ended)


def _with_forged_lines(tmp_path, name, forged):
    """A real capture with ``forged`` agent records written before its trailer, as the program
    could have written them into the agent's channel."""
    import json

    with gzip.open(os.path.join(DATA, name + ".gz"), "rt") as f:
        lines = f.read().splitlines()
    path = tmp_path / ("forged-" + name)
    path.write_text("\n".join(lines[:-1] + [json.dumps(e) for e in forged] + lines[-1:]) + "\n")
    return str(path)


def test_agent_records_the_kernel_never_saw_are_claims_not_counts(tmp_path):
    """The review's attack: 100 "gc" ends and one for a pid that does not exist made 101 COM_QUITs."""
    from trace_quit.analysis import build_report

    clean = build_report(load(_clean(tmp_path)))
    j, _ = joined(tmp_path, "known-causes.tqcap")
    pid = j.root_pid
    t = j.t_last - 10
    forged = [{"k": "conn_destroy", "t": t, "src": "agent", "pid": pid, "tid": pid, "conn": 0x5000 + i,
               "cause": "gc", "gen": 2, "cid": None} for i in range(100)]
    forged += [{"k": "conn_close", "t": t, "src": "agent", "pid": 999999, "tid": 999999, "conn": 0x10,
                "stack": []},
               {"k": "conn_open", "t": t, "src": "agent", "pid": pid, "tid": pid, "conn": 0x9000, "stack": []},
               {"k": "conn_fail", "t": t, "src": "agent", "pid": pid, "tid": pid, "conn": 0x9100, "error": "x"}]
    report = build_report(load(_with_forged_lines(tmp_path, "known-causes.tqcap", forged)))
    c, k = report.connections, clean.connections
    assert (c.opened, c.com_quit, c.never_closed, c.failed, c.open_at_end) == (
        k.opened, k.com_quit, k.never_closed, k.failed, k.open_at_end) == (39, 39, 0, 0, 0)
    assert report.com_quit.by_cause == clean.com_quit.by_cause
    assert report.agent_only["total"] == 103
    assert report.agent_only["by_cause"] == {"gc": 100, "explicit_close": 1, "never_closed": 1, "failed": 1}
    assert report.agent_only["pids"] == [pid, 999999]
    assert any("103 agent-only claims not counted" in line for line in report.summary)
    assert len(report.quits) == len(clean.quits)


def _clean(tmp_path):
    path = tmp_path / "clean.tqcap"
    with gzip.open(os.path.join(DATA, "known-causes.tqcap.gz"), "rb") as f:
        path.write_bytes(f.read())
    return str(path)


def test_without_the_kernel_layer_the_agent_is_all_there_is(tmp_path):
    """--no-bpf: nothing to bound the agent by; its records count (and the report says which layer ran)."""
    from trace_quit.analysis import build_report
    import synth

    report = build_report(load(synth.known_causes(str(tmp_path / "a.tqcap"), layers=("agent",))))
    assert report.connections.com_quit == 39 and report.agent_only["total"] == 0  # synth: 39
