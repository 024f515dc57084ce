"""The Perfetto / Chrome trace export (Trace Event Format), checked field by field on real captures.

known-causes.tqcap (tests/unit/data, recorded with both layers) sent 39 COM_QUITs: 7 close(),
11 refcount, 5 in a generation-0 and 13 in a generation-2 collection, 3 at shutdown.
"""

import collections
import gzip
import json
import os
import subprocess

from tq_support import TRACE_QUIT

from trace_quit.analysis import build_report, load, render

DATA = os.path.join(os.path.dirname(__file__), "data")
PHASES = {"M", "b", "e", "i", "X", "C"}


def _report(tmp_path, name):
    path = tmp_path / name
    with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
        path.write_bytes(f.read())
    return build_report(load(str(path))), str(path)


def _trace(tmp_path, name):
    report, _ = _report(tmp_path, name)
    return json.loads(render(report, "perfetto"))


def test_every_event_has_the_fields_its_phase_requires(tmp_path):
    doc = _trace(tmp_path, "known-causes.tqcap")
    assert doc["displayTimeUnit"] == "ms"
    events = doc["traceEvents"]
    assert {e["ph"] for e in events} == PHASES
    for e in events:
        assert isinstance(e["name"], str) and e["name"]
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], int) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], int) and e["dur"] >= 1
        if e["ph"] == "i":
            assert e["s"] == "t"
        if e["ph"] in ("b", "e"):
            assert e["cat"] == "connection" and isinstance(e["id"], str)
        if e["ph"] == "C":
            assert all(isinstance(v, int) for v in e["args"].values())


def test_known_causes_holds_exactly_39_com_quit_instants_with_their_causes(tmp_path):
    events = _trace(tmp_path, "known-causes.tqcap")["traceEvents"]
    quits = [e for e in events if e["ph"] == "i" and e["cat"] == "com_quit"]
    assert len(quits) == 39
    assert collections.Counter(e["name"] for e in quits) == {
        "COM_QUIT explicit_close": 7, "COM_QUIT refcount": 11, "COM_QUIT gc gen 0": 5,
        "COM_QUIT gc gen 2": 13, "COM_QUIT shutdown": 3}
    assert all(e["args"]["wire"] == "confirmed" for e in quits)
    assert not [e for e in events if e["ph"] == "i" and e["cat"] == "end"]


def test_each_connection_is_one_slice_that_ends_at_its_com_quit(tmp_path):
    events = _trace(tmp_path, "known-causes.tqcap")["traceEvents"]
    begins = {e["id"]: e for e in events if e["ph"] == "b"}
    ends = {e["id"]: e for e in events if e["ph"] == "e"}
    assert len(begins) == len(ends) == 39 and begins.keys() == ends.keys()
    assert all(begins[i]["ts"] <= ends[i]["ts"] for i in begins)
    quit_ts = collections.Counter((e["pid"], e["tid"], e["ts"]) for e in events if e["ph"] == "i")
    assert collections.Counter((e["pid"], e["tid"], e["ts"]) for e in ends.values()) == quit_ts


def test_collections_that_destroyed_connections_are_slices_on_the_collecting_thread(tmp_path):
    events = _trace(tmp_path, "known-causes.tqcap")["traceEvents"]
    gcs = [e for e in events if e["ph"] == "X"]
    assert sorted((e["name"], e["args"]["connections"]) for e in gcs) == [("gc gen 0", 5), ("gc gen 2", 13)]
    gc_quits = [e for e in events if e["ph"] == "i" and e["args"]["cause"] == "gc"]
    assert {(e["pid"], e["tid"]) for e in gcs} == {(e["pid"], e["tid"]) for e in gc_quits}
    # Each gc COM_QUIT lies inside its collection's slice.
    for q in gc_quits:
        assert any(g["ts"] <= q["ts"] <= g["ts"] + g["dur"] for g in gcs)


def test_the_live_count_is_a_counter_track_that_peaks_at_the_reports_maximum(tmp_path):
    report, _ = _report(tmp_path, "known-causes.tqcap")
    events = json.loads(render(report, "perfetto"))["traceEvents"]
    live = [e["args"]["live"] for e in events if e["ph"] == "C" and e["name"] == "live connections"]
    assert max(live) == report.connections.max_live == 18 and live[-1] == 0


def test_trace_quit_report_format_perfetto_prints_the_trace(tmp_path):
    _, path = _report(tmp_path, "engine-per-call.tqcap")
    out = subprocess.run(TRACE_QUIT + ["report", path, "--format", "perfetto"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)["traceEvents"]
    quits = [e for e in events if e["ph"] == "i" and e["cat"] == "com_quit"]
    report, _ = _report(tmp_path, "engine-per-call.tqcap")
    assert len(quits) == sum(n for c, n in report.com_quit.by_cause.items()
                             if c in ("explicit_close", "refcount", "gc", "shutdown", "unknown"))
    assert any(e["ph"] == "C" and e["name"] == "server connections" for e in events)
