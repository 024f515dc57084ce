"""The capture reader: tolerant of damage, strict about versions, raises only CaptureError."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_quit.analysis.capture import MAX_LINE_BYTES, CaptureError, iter_events, iter_records, load
from synth import SynthCapture, known_causes
from trace_quit.tracer import events as ev


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory):
    """The known-causes capture's bytes (a few hundred records)."""
    path = str(tmp_path_factory.mktemp("cap") / "kc.tq")
    known_causes(path)
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def tiny_capture(tmp_path_factory):
    """A capture of ~20 records: every byte offset of it is cheap to try."""
    path = str(tmp_path_factory.mktemp("cap") / "tiny.tq")
    s = SynthCapture(path)
    a, b = s.open(0.1), s.open(0.2)
    s.close(0.3, a, ev.EXPLICIT_CLOSE)
    s.collection(0.4, 1, destroy=[b])
    s.finish(0.5)
    with open(path, "rb") as f:
        return f.read()


def write(tmp_path, data: bytes, name="c.tq") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def note(t: int) -> bytes:
    """One well-formed event line (a tracer note at ``t``)."""
    return b'{"k":"note","t":%d,"src":"tracer","level":"info","text":"x"}\n' % t


def header_line(**extra) -> bytes:
    h = {"format": ev.FORMAT, "version": ev.VERSION, "t": 1}
    h.update(extra)
    return (json.dumps(h) + "\n").encode()


def test_complete_capture_reads_every_record(tmp_path, small_capture):
    path = write(tmp_path, small_capture)
    cap = load(path)
    lines = small_capture.count(b"\n")
    assert cap.trailer is not None and cap.trailer["exit_status"] == 0
    assert len(cap.events) == lines - 2
    assert cap.status == "complete" and not cap.truncated
    assert cap.damaged_at_line is None and cap.partial_line is None
    assert sum(cap.trailer["counts"].values()) == len(cap.events)
    assert list(iter_events(path)) == cap.events


def test_empty_file_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(CaptureError, match="is empty"):
        load(write(tmp_path, b""))


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(CaptureError, match="does not exist"):
        load(str(tmp_path / "nope.tq"))
    with pytest.raises(CaptureError, match="is a directory"):
        load(str(tmp_path))


def test_random_bytes_are_not_a_capture(tmp_path):
    with pytest.raises(CaptureError, match="not a trace-quit capture"):
        load(write(tmp_path, os.urandom(4096)))


def test_future_version_is_refused_naming_both_versions(tmp_path):
    path = write(tmp_path, header_line(version=ev.VERSION + 1) + note(2))
    with pytest.raises(CaptureError) as info:
        load(path)
    msg = str(info.value)
    assert "version %d capture" % (ev.VERSION + 1) in msg and "reads version 1 or %d" % ev.VERSION in msg
    assert "\n" not in msg


def test_huge_line_is_damage_not_memory(tmp_path):
    path = write(tmp_path, header_line() + note(2) + b'{"k":"note","x":"' + b"a" * (MAX_LINE_BYTES + 10)
                 + b'"}\n' + note(3))
    cap = load(path)
    assert cap.damaged_at_line == 3 and len(cap.events) == 1
    assert cap.status == "damaged at line 3"


def test_huge_header_is_not_a_capture(tmp_path):
    path = write(tmp_path, b'{"format":"trace-quit/capture","version":1,"x":"' + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n')
    with pytest.raises(CaptureError):
        load(path)


def test_deeply_nested_line_is_damage(tmp_path):
    # json.loads raises RecursionError (not ValueError) on this: the reader must not leak it.
    path = write(tmp_path, header_line() + b"[" * 200000 + b"\n")
    cap = load(path)
    assert cap.damaged_at_line == 2 and cap.events == []
    with pytest.raises(CaptureError):
        load(write(tmp_path, b"[" * 200000 + b"\n", "h.tq"))


def test_trailer_cut_off_mid_line_is_truncated_not_damaged(tmp_path, small_capture):
    data = small_capture[:-10]  # the trailer's last bytes and newline are missing
    cap = load(write(tmp_path, data))
    assert cap.trailer is None and cap.truncated
    assert cap.damaged_at_line is None and cap.partial_line == small_capture.count(b"\n")
    assert cap.status == "truncated"


def test_garbage_appended_after_trailer_is_damage(tmp_path, small_capture):
    cap = load(write(tmp_path, small_capture + b"garbage\n"))
    assert cap.trailer is not None
    assert cap.damaged_at_line == small_capture.count(b"\n") + 1


def test_iter_records_gives_header_events_trailer_and_damage_marker(tmp_path, small_capture):
    recs = list(iter_records(write(tmp_path, small_capture)))
    assert recs[0]["format"] == ev.FORMAT and recs[-1]["k"] == ev.TRAILER
    assert len(recs) == small_capture.count(b"\n")
    recs = list(iter_records(write(tmp_path, small_capture[:-10], "t.tq")))
    assert recs[-1] == {"k": "partial", "line": small_capture.count(b"\n")}
    recs = list(iter_records(write(tmp_path, header_line() + b"{oops\n", "d.tq")))
    assert recs[-1] == {"k": "damaged", "line": 2}


@pytest.mark.slow
def test_truncated_at_every_byte_offset_reads_or_raises_capture_error(tmp_path, tiny_capture):
    path = str(tmp_path / "cut.tq")
    header_end = tiny_capture.index(b"\n")
    total = tiny_capture.count(b"\n") - 2
    previous = -1
    for cut in range(len(tiny_capture) + 1):
        with open(path, "wb") as f:
            f.write(tiny_capture[:cut])
        try:
            cap = load(path)
        except CaptureError:
            assert cut <= header_end  # only an incomplete header is refused
            continue
        assert cap.damaged_at_line is None  # a cut is truncation, never damage
        assert len(cap.events) >= previous  # more bytes never read fewer events
        previous = len(cap.events)
        if cut < len(tiny_capture):
            assert cap.trailer is None
    assert previous == total


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_raise_only_capture_error(tmp_path, data):
    path = write(tmp_path, data, "fuzz.tq")
    try:
        load(path)
        list(iter_records(path))
    except CaptureError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=50)), max_size=20),
       st.booleans())
def test_fuzz_lines_after_a_valid_header_raise_nothing(tmp_path, lines, newline_at_end):
    data = header_line() + b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    path = write(tmp_path, data, "fuzz2.tq")
    cap = load(path)
    assert all(isinstance(e.k, str) for e in cap.events)
    list(iter_records(path))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_corrupting_bytes_of_a_real_capture_raises_only_capture_error(tmp_path, small_capture, data):
    buf = bytearray(small_capture)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    path = write(tmp_path, bytes(buf), "fuzz3.tq")
    try:
        load(path)
    except CaptureError:
        pass
