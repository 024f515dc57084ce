"""The capture writer: private file, never clobbers, readable while still being written."""

import json
import os
import stat
import time

import pytest

from trace_quit.analysis.capture import load
from trace_quit.tracer import events as ev
from trace_quit.tracer.records import as_dict
from trace_quit.tracer.capture import FLUSH_INTERVAL_S, CaptureExistsError, CaptureWriter


def test_capture_is_private_and_complete(tmp_path):
    path = str(tmp_path / "c.tqcap")
    w = CaptureWriter(path)
    w.write_header({"argv": ["x"]})
    for i in range(23):
        w.emit({"k": ev.CONN_OPEN, "t": i, "src": "agent", "pid": 1, "tid": 1, "conn": i, "stack": []})
    w.close({"exit_status": 3})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cap = load(path)
    assert cap.status == "complete"
    assert len(cap.events) == 23
    assert cap.trailer["counts"] == {"conn_open": 23}
    assert cap.trailer["exit_status"] == 3
    assert cap.header["argv"] == ["x"] and cap.header["clock"] == "CLOCK_MONOTONIC"


def test_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "c.tqcap"
    path.write_text("precious")
    with pytest.raises(CaptureExistsError):
        CaptureWriter(str(path))
    assert path.read_text() == "precious"
    CaptureWriter(str(path), force=True).close({})
    assert path.read_text() != "precious"


def test_symlink_at_output_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep me")
    link = tmp_path / "c.tqcap"
    link.symlink_to(target)
    with pytest.raises(CaptureExistsError):
        CaptureWriter(str(link))
    w = CaptureWriter(str(link), force=True)  # replaces the link, never writes through it
    w.close({})
    assert target.read_text() == "keep me"
    assert not link.is_symlink()


def test_events_reach_disk_within_the_flush_interval(tmp_path):
    path = str(tmp_path / "c.tqcap")
    w = CaptureWriter(path)
    w.write_header({})
    w.emit({"k": ev.CONN_OPEN, "t": 1, "src": "agent", "pid": 1, "tid": 1, "conn": 1, "stack": []})
    time.sleep(FLUSH_INTERVAL_S * 3)
    cap = load(path)  # as a killed tracer would leave it: no trailer yet
    assert cap.status == "truncated"
    assert [e.k for e in cap.events] == ["conn_open"]
    w.close({})


# --- the bound (--max-capture) ----------------------------------------------------------------

def _open(i):
    return {"k": ev.CONN_OPEN, "t": 1000 + i, "src": "agent", "pid": 7, "tid": 7, "conn": i, "stack": []}


def _bpf_close_line(i, cause, gen):
    return ev.encode({"k": ev.BPF_CLOSE, "t": 5000 + i, "src": "bpf", "pid": 7, "tid": 7, "conn": i, "cause": cause,
                      "gen": gen, "self": 0, "sock": True, "last_errno": None, "eof": False})


def test_a_bounded_capture_counts_what_it_does_not_write(tmp_path):
    path = str(tmp_path / "c.tqcap")
    reached = []
    w = CaptureWriter(path, max_bytes=4096, on_bound=lambda t, n: reached.append(n))
    w.write_header({"argv": ["x"]})
    line_size = len(ev.encode(_open(100)))
    header_size = os.path.getsize(path)
    opened = 0
    while header_size + opened * line_size < 4096:   # the last one written crosses the bound
        w.emit(_open(100 + opened))
        opened += 1
    assert reached == []
    # past the bound: detail is counted, never written
    for i in range(5):
        w.emit(_open(i))
    for i in range(3):
        w.emit({"k": ev.CONN_DESTROY, "t": 2000 + i, "src": "agent", "pid": 7, "tid": 7, "conn": i, "cause": "gc",
                "gen": 2, "cid": 1})
    w.emit({"k": ev.CONN_DESTROY, "t": 2100, "src": "agent", "pid": 7, "tid": 7, "conn": 9, "cause": "refcount",
            "gen": None, "cid": None})
    w.emit({"k": ev.CONN_CLOSE, "t": 2200, "src": "agent", "pid": 7, "tid": 7, "conn": 8, "stack": []})
    w.emit(ev.check({"k": ev.BPF_CLOSE, "t": 3000, "src": "bpf", "pid": 7, "tid": 7, "conn": 1, "cause": "refcount",
                     "gen": None, "self": 0, "sock": True, "last_errno": None, "eof": False}))
    # the eBPF fast path: a pre-encoded batch, its closes read for their causes
    batch = (_bpf_close_line(1, "gc", 2) + _bpf_close_line(2, "gc", 2) + _bpf_close_line(3, "gc", 0)
             + _bpf_close_line(4, "gc", None) + _bpf_close_line(5, "explicit_close", None)
             + ev.encode({"k": ev.BPF_CLOSE_RET, "t": 6000, "src": "bpf", "pid": 7, "tid": 7, "conn": 5,
                          "wire": "confirmed", "sends": 1, "t0": 5999, "send_err": 0, "tcp_from": None,
                          "tcp_to": None, "fin_first": None}))
    w.emit_text(batch, {ev.BPF_CLOSE: 5, ev.BPF_CLOSE_RET: 1})
    # samples: one per 10 s goes on, the last one at close; notes always
    for s in range(0, 35):
        w.emit({"k": ev.SERVER_COUNT, "t": 10**9 * (100 + s), "src": "sampler", "count": s})
    w.emit({"k": ev.TRACER_NOTE, "t": 9000, "src": "tracer", "level": "info", "text": "still here"})
    assert reached == [4096]
    w.close({"exit_status": 0})

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cap = load(path)
    assert cap.status == "complete"
    written = [e for e in cap.events if e.k == ev.CONN_OPEN]
    assert [e.conn for e in written] == list(range(100, 100 + opened))
    samples = [e.count for e in cap.events if e.k == ev.SERVER_COUNT]
    assert samples == [0, 10, 20, 30, 34]   # every 10 s, then the last one
    assert [e.text for e in cap.events if e.k == ev.TRACER_NOTE] == ["still here"]
    bound = cap.trailer["bound"]
    assert bound["max_bytes"] == 4096 and type(bound["reached_t"]) is int
    assert bound["not_written"] == {"conn_open": 5, "conn_destroy": 4, "conn_close": 1, "bpf_close": 6,
                                    "bpf_close_ret": 1, "server_count": 30}
    # The kernel's evidence of each end, one row per distinct evidence, for the report to decide.
    rows = bound["closes_after"]["kernel"]["rows"]
    assert sum(n for n, _ in rows) == 6
    assert [(n, r["cause"], r["wire"]) for n, r in rows if "wire" in r] == [(1, "explicit_close", "confirmed")]
    kernel = {k: v for k, v in bound["closes_after"]["kernel"].items() if k != "rows"}
    assert dict(bound["closes_after"], kernel=kernel) == {
        "kernel": {"by_cause": {"refcount": 1, "gc": 4, "explicit_close": 1},
                   "gc_by_generation": {"2": 2, "0": 1, "unknown": 1}, "wire": {"confirmed": 1}, "opened": 0},
        "agent": {"by_cause": {"gc": 3, "refcount": 1, "explicit_close": 1}, "gc_by_generation": {"2": 3},
                  "opened": 5}}
    # counts: every event emitted, written or not
    assert cap.trailer["counts"]["conn_open"] == opened + 5 and cap.trailer["counts"]["server_count"] == 35
    # the size: the bound, plus the line that crossed it, the samples and note after it, the trailer
    after = sum(len(ev.encode(as_dict(e))) for e in cap.events if e.k in (ev.SERVER_COUNT, ev.TRACER_NOTE))
    trailer = len(ev.encode(dict(cap.trailer, k=ev.TRAILER)))
    assert os.path.getsize(path) <= 4096 + line_size + after + trailer


def test_a_batch_that_starts_under_the_bound_is_written_whole(tmp_path):
    path = str(tmp_path / "c.tqcap")
    w = CaptureWriter(path, max_bytes=1)   # the header alone reaches it
    w.write_header({})
    w.emit_text(_bpf_close_line(1, "gc", 2), {ev.BPF_CLOSE: 1})   # over it already: counted
    w.close({})
    cap = load(path)
    assert [e for e in cap.events if e.k == ev.BPF_CLOSE] == []
    assert cap.trailer["bound"]["closes_after"]["kernel"]["by_cause"] == {"gc": 1}

    path = str(tmp_path / "d.tqcap")
    w = CaptureWriter(path, max_bytes=10**6)
    w.write_header({})
    batch = "".join(_bpf_close_line(i, "refcount", None) for i in range(10))
    w.emit_text(batch, {ev.BPF_CLOSE: 10})
    w.close({})
    cap = load(path)
    assert len([e for e in cap.events if e.k == ev.BPF_CLOSE]) == 10
    assert "bound" not in cap.trailer     # never reached: the trailer is as before


def test_an_unbounded_capture_writes_everything(tmp_path):
    path = str(tmp_path / "c.tqcap")
    w = CaptureWriter(path, max_bytes=0, on_bound=lambda t, n: pytest.fail("no bound"))
    w.write_header({})
    for i in range(2000):
        w.emit(_open(i))
    w.close({})
    cap = load(path)
    assert len(cap.events) == 2000 and "bound" not in cap.trailer


@pytest.mark.parametrize("text, size", [("500M", 500 << 20), ("2G", 2 << 30), ("64K", 64 << 10), ("0", 0),
                                        ("1GiB", 1 << 30), ("4096", 4096), ("1.5k", 1536)])
def test_max_capture_sizes(text, size):
    from trace_quit.tracer.commands import arguments

    assert arguments.size(text) == size


def test_format_size_says_the_bound_as_given():
    from trace_quit.tracer.capture import format_size

    assert [format_size(n) for n in (1 << 30, 500 << 20, 64 << 10, 1000)] == ["1 GiB", "500 MiB", "64 KiB",
                                                                            "1000 bytes"]


def _ret_line(i, t=6000):
    return ev.encode({"k": ev.BPF_CLOSE_RET, "t": t + i, "src": "bpf", "pid": 7, "tid": 7, "conn": i,
                      "wire": "confirmed", "sends": 1, "t0": t, "send_err": 0, "tcp_from": None, "tcp_to": None,
                      "fin_first": None})


def _wire_line(i):
    return ev.encode({"k": ev.BPF_WIRE, "t": 5500 + i, "src": "bpf", "pid": 7, "tid": 7, "conn": i, "fd": 5, "len": 5,
                      "head": "0100000001", "quit": True, "tls": False, "ret": 5})


def test_a_close_written_before_the_bound_keeps_its_return(tmp_path):
    # A mysql_close's records can straddle two ring buffer batches: the close written, the bound
    # reached, its wire send and return in the next batch. They are written too (its wire verdict
    # is the detail's), and a close counted after the bound is counted with its own return.
    path = str(tmp_path / "c.tqcap")
    first = _bpf_close_line(1, "gc", 2) + _bpf_close_line(2, "refcount", None) + _ret_line(2)
    w = CaptureWriter(path, max_bytes=1)
    w.write_header({})
    w.max_bytes = os.path.getsize(path) + len(first)   # the first batch fills it exactly
    w.emit_text(first, {ev.BPF_CLOSE: 2, ev.BPF_CLOSE_RET: 1})
    w.emit_text(_wire_line(1) + _ret_line(1) + _bpf_close_line(3, "shutdown", None) + _wire_line(3) + _ret_line(3),
                {ev.BPF_WIRE: 2, ev.BPF_CLOSE_RET: 2, ev.BPF_CLOSE: 1})
    w.emit(ev.check(json.loads(_ret_line(1, t=7000))))   # a second return for conn 1: not the detail's
    w.close({})
    cap = load(path)
    written = [(e.k, e.conn) for e in cap.events]
    assert written == [("bpf_close", 1), ("bpf_close", 2), ("bpf_close_ret", 2), ("bpf_wire", 1),
                       ("bpf_close_ret", 1)]
    bound = cap.trailer["bound"]
    assert bound["not_written"] == {"bpf_close": 1, "bpf_wire": 1, "bpf_close_ret": 2}
    assert bound["closes_after"]["kernel"]["by_cause"] == {"shutdown": 1}
    assert bound["closes_after"]["kernel"]["wire"] == {"confirmed": 2}
