"""trace-quit dump's helper: every record, one line each, times relative to the start."""

from trace_quit.analysis.dump import dump_lines, format_record
from synth import SynthCapture, strip_trailer
from trace_quit.tracer import events as ev


def test_dump_lines_cover_header_events_trailer_and_truncation(tmp_path):
    s = SynthCapture(str(tmp_path / "d.tq"))
    s.close(0.25, s.open(0.125), ev.EXPLICIT_CLOSE)
    s.finish(0.5)
    lines = list(dump_lines(s.path))
    with open(s.path, "rb") as f:
        assert len(lines) == f.read().count(b"\n")
    assert lines[0].startswith("header  {") and '"format": "trace-quit/capture"' in lines[0]
    conn_open = next(line for line in lines if " conn_open " in line)
    assert conn_open.startswith("+0.125050 s") and "agent" in conn_open and "4242/4242" in conn_open
    assert lines[-1].split()[2] == "trailer"
    strip_trailer(s.path)
    with open(s.path, "ab") as f:
        f.write(b'{"k":"note","t":1')  # a line cut mid-write
    assert list(dump_lines(s.path))[-1].split()[1] == "partial"


def test_format_record_without_times():
    assert format_record({"k": "x", "a": 1}).split() == ["-", "x", "-", "-/-", '{"a":', "1}"]
