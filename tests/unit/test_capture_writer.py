"""The capture writer: private file, never clobbers, readable while still being written."""

import os
import stat
import time

import pytest

from trace_quit.analysis.capture import load
from trace_quit.tracer import events as ev
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
    assert [e["k"] for e in cap.events] == ["conn_open"]
    w.close({})
