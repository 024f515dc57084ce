"""The text renderer: fits 100 columns, colour only on a tty without NO_COLOR, plain ASCII when asked."""

import io
import re

import pytest

from trace_quit.analysis import build_report, load, render
from synth import engine_per_call, known_causes

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("r")
    kc = build_report(load(known_causes(str(d / "kc.tq"))))
    engine_per_call(str(d / "epc.tq"))
    return kc, build_report(load(str(d / "epc.tq")))


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_every_line_fits_100_columns(reports):
    for text in (render(reports[0], "text"), render(reports[1], "text"), render(list(reports), "text"),
                 render(reports[1], "text", color=True)):
        for line in text.splitlines():
            assert len(ANSI.sub("", line)) <= 100, line


def test_text_carries_the_explanation(reports):
    text = render(reports[1], "text")
    assert "gc                   421" in text and "gen 0: 8 · gen 1: 330 · gen 2: 83" in text
    assert "a generation-2 collection on thread ThreadPoolExecutor-0_3 (10,575 objects)" in text
    assert "a generation-1 collection every ~6.5 s destroys ~33 connections" in text
    assert "config/database.py:22 in get_db_session" in text
    assert "ERROR   create_engine() ran 500 times" in text
    assert "fix: Create the Engine once" in text


def test_colour_only_on_a_tty(reports, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty, pipe = Tty(), io.StringIO()
    render(reports[0], "text", stream=tty)
    render(reports[0], "text", stream=pipe)
    assert ANSI.search(tty.getvalue()) and not ANSI.search(pipe.getvalue())
    assert ANSI.sub("", tty.getvalue()) == pipe.getvalue()


def test_no_color_wins_even_when_the_caller_asks_for_colour(reports, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    render(reports[0], "text", stream=tty, color=True)
    assert not ANSI.search(tty.getvalue())


def test_files_never_get_colour(reports, tmp_path, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = tmp_path / "r.txt"
    render(reports[0], "text", path=str(out))
    assert not ANSI.search(out.read_text())


def test_ascii_stream_gets_ascii(reports):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    render(reports[1], "text", stream=stream)
    stream.seek(0)
    text = stream.buffer.getvalue().decode("ascii")
    assert "162 -> 79" in text and "####" in text


def test_comparison_table_has_a_column_per_capture(reports):
    text = render(list(reports), "text")
    head = text.splitlines()[:30]
    assert head[0] == "trace-quit comparison of 2 captures"
    row = next(line for line in head if line.startswith("  gc "))
    assert row.split()[1:] == ["18", "421"]
    largest = next(line for line in head if line.startswith("largest drop"))
    assert largest.split()[2:] == ["13→0", "162→79"]
    assert text.count("trace-quit report  ") == 2


def test_unknown_format_is_a_clear_error(reports):
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        render(reports[0], "pdf")
