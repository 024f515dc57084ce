"""tracer/metrics.py's incremental attribution against the report, on real captures (no server).

Each capture is replayed in 50 ms slices of its own clock, with a tick after each slice (as
the exporter's thread does while the program runs), then a final tick: the counts must be
the report's, exactly — the exporter decides no cause itself.
"""

import collections
import os
import re

import pytest

from trace_quit.analysis import build_report
from trace_quit.tracer import metrics
from trace_quit.tracer.records import as_dict
from tq_support import load_fixture

DATA = os.path.join(os.path.dirname(__file__), "data")


capture = load_fixture


def replay(cap, slice_ns=50 * 10**6, arrival=None):
    """Feed ``cap`` to an Attributor slice by slice; return (opened by site, closes by (cause, gen)).

    ``arrival(event)``: when the exporter sees it (default: its own time ``t``)."""
    arrival = arrival or (lambda e: e.t)
    att = metrics.Attributor(cap.header)  # as the run's exporter had it (metrics.header_for)
    events = sorted((e for e in cap.events if isinstance(e.t, int)), key=arrival)
    opened, closes = collections.Counter(), collections.Counter()
    i = 0
    t = arrival(events[0])
    while i < len(events):
        t += slice_ns
        chunk = []
        while i < len(events) and arrival(events[i]) <= t:
            chunk.append(as_dict(events[i]))  # as the recorder hands them over
            i += 1
        att.add(chunk)
        o, c = att.tick(t)
        opened.update(o)
        closes.update((cause, gen) for cause, gen, _ in c)
    o, c = att.tick(t + 1, final=True)
    opened.update(o)
    closes.update((cause, gen) for cause, gen, _ in c)
    return att, opened, closes


def report_counts(cap):
    report = build_report(cap)
    want = collections.Counter()
    for cause, n in report.com_quit.by_cause.items():
        if n and cause != "gc":
            want[(cause, None)] = n
    for gen, n in report.com_quit.gc_by_generation.items():
        if n:
            want[("gc", int(gen))] = n
    return report, want


@pytest.mark.parametrize("name", ["known-causes.tqcap", "known-causes-tcp.tqcap", "engine-per-call.tqcap",
                                  "shared-engine.tqcap", "server-and-fork.tqcap", "server-stop.tqcap"])
def test_incremental_counts_equal_the_report(name, tmp_path):
    cap = capture(tmp_path, name)
    report, want = report_counts(cap)
    att, opened, closes = replay(cap)
    assert closes == want
    assert sum(opened.values()) == report.connections.opened
    # Counted connections leave the attributor: what it still holds is not the run's history.
    assert not [e for e in att.events if e.k in ("conn_open", "bpf_connect")]


def test_call_site_labels_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "TOP_SITES", 1)
    cap = capture(tmp_path, "known-causes.tqcap")
    att, opened, _ = replay(cap)
    assert len(set(opened) - {"unknown"}) == 1  # "unknown": a connection no layer saw open from a frame
    att.label("elsewhere.py:1 in f")
    assert att.label("elsewhere.py:1 in f") == metrics.OTHER


def test_labels_carry_no_password():
    att = metrics.Attributor({"layers": {"agent": True}})
    assert att.label("mysql://app:hunter2@db/x") == "mysql://app:***@db/x"


def test_exporter_serves_openmetrics(tmp_path):
    import urllib.request

    cap = capture(tmp_path, "known-causes.tqcap")
    server = metrics.serve({"cwd": cap.header.get("cwd"), "layers": cap.header.get("layers")}, "127.0.0.1", 0)
    try:
        for e in cap.events:
            server.exporter.observe(as_dict(e))
        server.exporter.finish()
        req = urllib.request.Request("http://127.0.0.1:%d/metrics" % server.port,
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode()
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    finally:
        server.close()
    assert body.endswith("# EOF\n")
    _, want = report_counts(cap)
    gc2 = sum(float(n) for n in re.findall(r'^trace_quit_com_quit_total\{call_site="[^"]*",cause="gc",generation="2"\} '
                                          r'(\S+)$', body, re.M))
    assert gc2 == want[("gc", 2)] > 0
    assert "trace_quit_connections_open 0" in body
    assert "trace_quit_program_running 0" in body
    assert server.exporter.scraped_since_finish()


def test_grafana_dashboard_uses_only_exported_metrics(tmp_path):
    import json

    from trace_quit.tracer.metrics import Exporter

    with open(os.path.join(os.path.dirname(DATA), "..", "..", "docs", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    exporter = Exporter({"layers": {"agent": True}})
    exporter.finish()
    exported = set()
    for family in exporter.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"\btrace_quit_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    assert "trace_quit_com_quit_total" in used and "trace_quit_connections_open" in used


@pytest.mark.parametrize("name", ["known-causes.tqcap", "engine-per-call.tqcap"])
def test_agent_events_arriving_after_the_kernels_count_once(name, tmp_path):
    """The agent's lines reach the exporter in batches, after the kernel's records of the same
    connections (recorder's agent loop): a connection the kernel finished first must not be
    counted again when the agent's open and end arrive (Prometheus showed twice the report's)."""
    cap = capture(tmp_path, name)
    report, want = report_counts(cap)
    delay = 300 * 10**6  # the agent's lines arrive this much after the kernel's (< SETTLE_S)
    _, opened, closes = replay(cap, arrival=lambda e: e.t + (delay if e.src == "agent" else 0))
    assert closes == want
    assert sum(opened.values()) == report.connections.opened
