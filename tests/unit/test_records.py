"""Typed records (tracer/records.py): one type per kind of tracer/events.py KINDS."""

import pytest

from trace_quit.tracer import events as ev
from trace_quit.tracer.records import ANALYSIS_FIELDS, Other, as_dict, make, type_of, typed


@pytest.mark.parametrize("kind", sorted(ev.KINDS))
def test_one_field_per_declared_field(kind):
    declared = tuple(f.name for f in ev.KINDS[kind][1]) + ANALYSIS_FIELDS.get(kind, ())
    assert type_of(kind)._fields == declared and type_of(kind).k == kind


def test_absent_is_none_unknown_keys_are_dropped_and_a_typo_fails():
    e = typed({"k": ev.CONN_DESTROY, "t": 5, "src": "agent", "pid": 9, "tid": 9, "conn": 1, "cause": "gc",
               "gen": None, "cid": None, "later": 1})
    assert (e.k, e.cause, e.gen, e.driver) == (ev.CONN_DESTROY, "gc", None, None)
    with pytest.raises(AttributeError):
        e.later  # noqa: B018 (not declared: dropped)
    with pytest.raises(AttributeError):
        e.cuase  # noqa: B018
    with pytest.raises(TypeError):
        e["cause"]  # noqa: B018
    with pytest.raises(AttributeError):
        e.cause = "refcount"
    assert typed(e) is e and as_dict(e) == {"k": ev.CONN_DESTROY, "t": 5, "src": "agent", "pid": 9, "tid": 9,
                                           "conn": 1, "cause": "gc"}


def test_common_keys_read_none_where_a_kind_has_none_and_unknown_kinds_are_other():
    assert make(ev.SERVER_COUNT, t=1, src="sampler", count=3).pid is None
    other = typed({"k": "from_the_future", "t": 1, "pid": 2, "x": 3})
    assert type(other) is Other and (other.k, other.t, other.pid, other.src) == ("from_the_future", 1, 2, None)
