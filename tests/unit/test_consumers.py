"""One count, every view: each real capture replayed through every consumer gives the same totals.

The totals are ``analysis.attribute.count()``'s (the report's ``att.totals``): by cause, by gc
generation and by process. Each consumer is read the way a user reads it -- the JSON report,
the HTML page's table, the Perfetto trace's instants, Prometheus's counters after an
incremental replay -- and must say the same numbers, fork copies counted once
(server-and-fork: 9 ends, not 12). The views that see the agent's records alone as they arrive
(the pytest plugin's ledger, the live status line) are checked against the report of the same
capture with the kernel's records left out.
"""

import collections
import json
import re

import pytest

from trace_quit.analysis import build_report, render
from trace_quit.analysis.attribute import Context, attribute_all, count  # noqa: F401 (the one count)
from trace_quit.analysis.capture import Capture
from trace_quit.tracer import events as ev
from trace_quit.tracer.pytest_plugin import GC, OPEN_AT_END, Ledger
from trace_quit.tracer.status import Tally

from test_metrics import replay
from tq_support import FIXTURES, load_fixture


def _key(cause, gen):
    return (cause, gen if cause == ev.GC else None)


def _truth(report):
    """(cause, generation) -> n and pid -> (cause, generation) -> n, from the report's model."""
    by = collections.Counter()
    for cause, n in report.com_quit.by_cause.items():
        if n and cause != ev.GC:
            by[(cause, None)] = n
    for gen, n in report.com_quit.gc_by_generation.items():
        if n:
            by[(ev.GC, int(gen) if gen.isdigit() else None)] = n
    per_pid = {row["pid"]: dict(row["by_cause"]) for row in report.processes}
    return by, per_pid


def _detail(report, by):
    """``by`` without the ends counted past a --max-capture bound: the views that show each end
    (Perfetto's instants, the processes, what an exporter saw of the written events) hold the
    detail only; the totals (JSON, HTML, the text) add the counted ones."""
    out = collections.Counter(by)
    if report.bound is not None:
        gens = report.bound["closes_after_gc_by_generation"]
        for cause, n in report.bound["closes_after"].items():
            if cause != ev.GC:
                out[(cause, None)] -= n
        for gen, n in gens.items():
            out[(ev.GC, int(gen) if gen.isdigit() else None)] -= n
    return +out


def _process_key(cause, gen):
    return cause if cause != ev.GC or gen is None else "gc gen %d" % gen


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, tmp_path_factory):
    cap = load_fixture(tmp_path_factory.mktemp("consumers"), request.param)
    return request.param, cap, build_report(cap)


def test_the_reports_totals_are_the_one_count(fixture):
    _, cap, report = fixture
    by, per_pid = _truth(report)
    assert sum(by.values()) == report.connections.com_quit + report.connections.never_closed + \
        report.connections.server
    merged = collections.Counter()
    for counts in per_pid.values():
        merged.update(counts)
    assert merged == collections.Counter({_process_key(c, g): n for (c, g), n in _detail(report, by).items()})


def test_json_says_the_same(fixture):
    _, _, report = fixture
    by, per_pid = _truth(report)
    doc = json.loads(render([report], "json"))
    got = collections.Counter()
    for cause, n in doc["com_quit"]["by_cause"].items():
        if n and cause != ev.GC:
            got[(cause, None)] = n
    for gen, n in doc["com_quit"]["gc_by_generation"].items():
        if n:
            got[(ev.GC, int(gen) if gen.isdigit() else None)] = n
    assert got == by
    assert {row["pid"]: row["by_cause"] for row in doc["processes"]} == per_pid


def test_html_says_the_same(fixture):
    _, _, report = fixture
    by, _ = _truth(report)
    page = render([report], "html")
    table = page[page.index("<h2>COM_QUIT by cause</h2>"):]
    table = table[:table.index("</table>")]
    for cause in ev.CAUSES:
        want = sum(n for (c, _), n in by.items() if c == cause)
        m = re.search(r"</span>%s</td>\s*<td class=\"n\">([\d,]+)</td>" % re.escape(cause), table)
        assert m and int(m.group(1).replace(",", "")) == want, cause
    gens = dict(re.findall(r"gen (\w+): ([\d,]+)", table))
    assert {(ev.GC, int(g) if g.isdigit() else None): int(n.replace(",", "")) for g, n in gens.items()} == \
        {k: n for k, n in by.items() if k[0] == ev.GC}


def test_perfetto_says_the_same(fixture):
    _, _, report = fixture
    by, per_pid = _truth(report)
    trace = json.loads(render([report], "perfetto"))["traceEvents"]
    got, got_pid = collections.Counter(), collections.defaultdict(collections.Counter)
    for e in trace:
        if e.get("ph") == "i" and e.get("cat") in ("com_quit", "end"):
            key = _key(e["args"]["cause"], e["args"]["generation"])
            got[key] += 1
            got_pid[e["pid"]][_process_key(*key)] += 1
    assert got == _detail(report, by)
    assert {pid: dict(c) for pid, c in got_pid.items()} == per_pid


def test_prometheus_says_the_same(fixture):
    _, cap, report = fixture
    by, _ = _truth(report)
    _, opened, closes = replay(cap)
    # A bounded capture holds only the detail: the exporter of that run saw every event, the
    # replay sees what was written.
    if report.bound is not None:  # open at the bound: their ends are among the counted, unseen here
        assert closes.pop((ev.NEVER_CLOSED, None), 0) == report.bound["open_at_bound"]
    assert closes == _detail(report, by)
    after = report.bound["opened_after"] if report.bound is not None else 0
    assert sum(opened.values()) == report.connections.opened - after


def _agent_only(cap):
    """The same capture as the agent alone recorded it (the pytest plugin's and the status line's view)."""
    events = [e for e in cap.events if e.src != ev.SRC_BPF]
    header = dict(cap.header, layers=dict(cap.header.get("layers") or {}, bpf=False, wire=False))
    return Capture(path=cap.path, header=header, events=events, trailer=cap.trailer)


def test_the_pytest_ledger_and_the_status_line_say_what_the_agent_alone_says(fixture):
    _, cap, _ = fixture
    agent = _agent_only(cap)
    report = build_report(agent)
    copies = [q for q in report.quits if not q.counted]
    by = _detail(report, _truth(report)[0])
    # Each handle's end, as the agent saw it: the counted ends and the fork copies.
    handles = collections.Counter(by)
    handles.update(_key(q.cause, q.generation) for q in copies)
    handles.pop((ev.NEVER_CLOSED, None), None)

    tally = Tally()
    for e in agent.events:
        tally.add(e)
    assert tally.quits == collections.Counter({c: sum(n for (k, _), n in handles.items() if k == c)
                                               for c, _ in handles})

    ledger = Ledger()
    ledger.feed(agent.events)
    ledger.close_open()
    got = collections.Counter()
    for rec in ledger.ended:
        if rec["cause"] != OPEN_AT_END:
            got[_key(rec["cause"], rec["gen"] if rec["cause"] == GC else None)] += 1
    # The ledger charges connections opened while it ran: a fork's inherited handles are not its own.
    want = collections.Counter(by)
    for cause in (ev.NEVER_CLOSED, ev.SHUTDOWN):
        want.pop((cause, None), None)
    for q in copies:
        if q.counted_pid is not None and q.inherited_from is None:  # the opener's end is the copy
            want[_key(q.cause, q.generation)] += 1
    for q in report.quits:
        if q.counted and q.inherited_from is not None and q.cause not in (ev.NEVER_CLOSED, ev.SHUTDOWN):
            want[_key(q.cause, q.generation)] -= 1  # ...and the counted end is a child's
    assert got == +want
