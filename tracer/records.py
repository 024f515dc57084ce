"""Typed records: one immutable type per record kind, generated from tracer/events.py ``KINDS``.

A record read from a capture (analysis/capture.py) or handed to a live view by the recorder
(tracer/metrics.py, tracer/status.py, tracer/pytest_ledger.py) goes through ``typed()``, so every
reader names its fields as attributes (``e.cause``, ``e.conn``): a field the kind does not declare
raises AttributeError instead of reading None. Each kind has one field per declared field; a
declared field absent from the record (optional, or added by a later revision) is None; keys the
kind does not declare are ignored, as the schema says. ``k`` is the type's, not a field.

The types are ``namedtuple`` subclasses: measured on 200,000 records of a 1M-event capture they
cost ~110-130 bytes each against ~360 for the dict json.loads makes (memory, see
tests/bench/report_1m.py), and build at about the cost of a dict copy with shared values;
frozen dataclasses build ~25 % slower for the same size. A record is a tuple: ``e["cause"]``
fails loudly (TypeError), ``e._replace(conn=...)`` makes a changed copy.

The agent does not use these (it writes plain dicts, stdlib only, inside the traced program).
"""

import collections
from typing import Any, Dict, Tuple

from . import events as ev

#: Fields the analysis gives a kind, beyond what its records carry on disk: the kernel's socket
#: records are keyed by pid + fd; analysis/aborted.pair_sockets gives them their ``conn``.
ANALYSIS_FIELDS = {ev.BPF_SOCK_CONNECT: ("conn",), ev.BPF_SOCK_CLOSE: ("conn",)}


def _class_name(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


#: The keys common to the kinds (tracer/events.py): a kind that has none of one reads None there,
#: so one loop over every kind reads them (analysis/join.py); any other field is its kind's alone.
COMMON = ("t", "src", "pid", "tid")


def _make_type(kind: str, names: Tuple[str, ...]) -> type:
    cls = collections.namedtuple(_class_name(kind), names)
    cls.k = kind  # the kind is the type's: not stored per record
    for name in COMMON:
        if name not in names:
            setattr(cls, name, None)
    cls.__module__ = __name__
    return cls


def _fields(kind: str) -> Tuple[str, ...]:
    names = tuple(f.name for f in ev.KINDS[kind][1])
    return names + tuple(n for n in ANALYSIS_FIELDS.get(kind, ()) if n not in names)


#: kind -> its record type.
TYPES: Dict[str, type] = {kind: _make_type(kind, _fields(kind)) for kind in ev.KINDS}

#: A kind ``KINDS`` does not declare (a newer writer's): what ``events.check`` lets through.
Other = collections.namedtuple("Other", ("k", "t", "src", "pid", "tid"))
Other.__module__ = __name__

_new = tuple.__new__


def type_of(kind: str) -> type:
    """The record type of ``kind`` (``Other`` for a kind not declared)."""
    return TYPES.get(kind, Other)


def typed(record: Dict[str, Any]) -> Any:
    """The typed record of a dict (a record as written); a typed record is returned as it is."""
    if not isinstance(record, dict):
        return record
    kind = record.get("k")
    cls = TYPES.get(kind, Other) if kind.__class__ is str else Other
    return _new(cls, map(record.get, cls._fields))


def make(kind: str, **fields: Any) -> Any:
    """A record of ``kind`` built by the analysis (absent fields None): evidence it derives."""
    cls = TYPES[kind]
    return _new(cls, map(fields.get, cls._fields))


def as_dict(record: Any) -> Dict[str, Any]:
    """A typed record back as the dict it was read from (its None fields left out)."""
    if isinstance(record, dict):
        return record
    out = {"k": record.k}
    out.update((n, v) for n, v in zip(record._fields, record) if v is not None)
    return out
