"""Connections per test, for captures the pytest plugin wrote (their ``test`` records).

A connection belongs to the test whose boundaries surround its open in the same process: from
the test's ``setup`` to its ``finish``; opened between tests it is "<outside any test>", during
the session's finish hooks or its exit handlers it says so. Its cause is the one attribute.py
decided (every view calls that one place); this module only groups.
"""

import bisect
from collections import Counter, defaultdict
from typing import Any, Dict, Iterable, List

from trace_quit.tracer import events as ev
from trace_quit.tracer.records import typed

OUTSIDE = "<outside any test>"
LABELS = {"sessionfinish": "<session finish hooks>", "exit": "<exit handlers>"}
#: Causes listed first: the ones a user fixes.
LEAK_CAUSES = (ev.GC, ev.NEVER_CLOSED, ev.SHUTDOWN, ev.UNKNOWN, ev.REFCOUNT)


def by_test(events: Iterable[Any], lives) -> List[Dict[str, Any]]:
    """[{"nodeid", "connections", "by_cause"}] for every test that opened a connection, in the
    order the tests ran; [] when the capture has no test boundaries."""
    starts: Dict[int, List[int]] = defaultdict(list)
    owners: Dict[int, List[Any]] = defaultdict(list)
    order: Dict[str, int] = {}
    for e in sorted((e for e in map(typed, events) if e.k == ev.TEST), key=lambda e: e.t):
        phase = e.phase
        if phase == "setup":
            owner = e.nodeid or OUTSIDE
        elif phase in LABELS:
            owner = LABELS[phase]
        elif phase == "finish":
            owner = None
        else:
            continue  # call, teardown: the same test
        starts[e.pid].append(e.t)
        owners[e.pid].append(owner)
        if owner is not None:
            order.setdefault(owner, len(order))
    if not order:
        return []
    rows: Dict[str, Dict[str, Any]] = {}
    for lf in lives:
        if lf.t_open is None:
            continue  # opened before the capture
        ts = starts.get(lf.pid)
        i = bisect.bisect_right(ts, lf.t_open) - 1 if ts else -1
        owner = (owners[lf.pid][i] if i >= 0 else None) or OUTSIDE
        order.setdefault(owner, len(order))
        row = rows.setdefault(owner, {"nodeid": owner, "connections": 0, "by_cause": Counter()})
        row["connections"] += 1
        row["by_cause"][lf.cause or "open"] += 1
    tail = (OUTSIDE,) + tuple(LABELS.values())  # after the tests, in the session's order
    out = sorted(rows.values(), key=lambda r: (tail.index(r["nodeid"]) + 1 if r["nodeid"] in tail else 0,
                                               order[r["nodeid"]]))
    for row in out:
        row["by_cause"] = dict(sorted(row["by_cause"].items()))
    return out


def leaks(row: Dict[str, Any]) -> int:
    """The connections of a row that the program did not close itself."""
    return sum(n for c, n in row["by_cause"].items() if c in LEAK_CAUSES)
