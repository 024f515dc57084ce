"""trace-quit dump: every record of a capture, for debugging (the CLI prints them)."""

import json
from typing import Any, Dict, Iterator, Optional

from .capture import iter_records

__all__ = ["iter_records", "format_record"]


def format_record(record: Dict[str, Any], t0: Optional[int] = None) -> str:
    """One record as one line: ``+12.345678 s  kind  src  pid/tid  {other keys}`` (header/trailer as JSON)."""
    k = record.get("k")
    t = record.get("t")
    if k is None or "format" in record:
        return "header  " + json.dumps(record, sort_keys=True, default=str)
    rest = {key: v for key, v in record.items() if key not in ("k", "t", "src", "pid", "tid")}
    if isinstance(t, int) and isinstance(t0, int):
        when = "%+.6f s" % ((t - t0) / 1e9)
    else:
        when = "-" if t is None else str(t)
    who = "%s/%s" % (record.get("pid", "-"), record.get("tid", "-"))
    return "%-16s %-14s %-8s %-14s %s" % (when, k, record.get("src", "-"), who,
                                           json.dumps(rest, sort_keys=True, default=str))


def dump_lines(path: str) -> Iterator[str]:
    """``format_record`` for every record, times relative to the program's start."""
    t0 = None
    for record in iter_records(path):
        if "format" in record and isinstance(record.get("t"), int) and t0 is None:
            t0 = record["t"]
        elif record.get("k") == "child_start" and isinstance(record.get("t"), int):
            t0 = record["t"]
        yield format_record(record, t0)
