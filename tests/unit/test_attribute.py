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
    assert all(life.cause is None for life in j.lives) and all(not c.lives for c in j.collections)


def test_attribute_all_counts_one_end_per_server_connection(tmp_path):
    j, ctx = joined(tmp_path, "server-and-fork.tqcap")
    att = attribute_all(j.lives, ctx)
    assert att.failed == 0 and len(att.copies) == len([lf for lf in j.lives if lf.copy_of and lf.cause])
    assert len(att.ended) + att.open_at_end == len(att.counted)
    assert all(lf.copy_of is None for lf in att.ended)
