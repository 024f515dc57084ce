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


# --- the first screen, on the real engine-per-call capture (issue 16) ------------------------

def _real(tmp_path, name):
    import gzip
    import os
    path = tmp_path / name
    with gzip.open(os.path.join(os.path.dirname(__file__), "data", name + ".gz"), "rb") as f:
        path.write_bytes(f.read())
    return build_report(load(str(path)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return _real(tmp_path_factory.mktemp("demo"), "engine-per-call.tqcap")


@pytest.mark.parametrize("columns", ["100", "80"])
def test_first_screen_has_verdict_place_and_fix(demo, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    lines = render(demo, "text").splitlines()
    screen = "\n".join(lines[:25])
    flat = " ".join(screen.split())
    assert "SUMMARY" in screen
    assert "ERROR create_engine() ran 500 times at /work/main/workloads/engine_per_call.py:40 in " \
           "get_db_session and no Engine was disposed" in flat
    assert "fix: Create the Engine once" in flat
    # The summary ends with that fix: the next line after it is the next section.
    fix_at = next(i for i, line in enumerate(lines) if line.startswith("  fix:    Create the Engine once"))
    rest = lines[fix_at + 1:]
    assert next(line for line in rest if not line.startswith("          ")) == ""
    assert all(len(line) <= int(columns) for line in lines)
    # And the summary no longer repeats the call site's Engines the verdict already names.
    assert "All 500 connections belonged" not in screen


def test_terminal_width_is_followed(demo, monkeypatch):
    monkeypatch.setenv("COLUMNS", "64")
    text = render(demo, "text")
    assert max(len(line) for line in text.splitlines()) <= 64
    monkeypatch.setenv("COLUMNS", "140")
    assert max(len(line) for line in render(demo, "text").splitlines()) > 100
    monkeypatch.delenv("COLUMNS")
    # pytest's captured stdout is no terminal: the default, 100 columns
    assert max(len(line) for line in render(demo, "text").splitlines()) <= 100


def test_drops_are_a_table_with_the_long_sentence_once(demo, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    lines = render(demo, "text").splitlines()
    start = lines.index("DROPS IN LIVE CONNECTIONS")
    section = lines[start + 1:lines.index("", start)]
    assert section[0].split() == ["t", "(s)", "live", "ms", "cause", "thread"]
    assert section[1].split() == ["9.4", "37", "→", "12", "7.3", "gc", "gen", "1", "ThreadPoolExecutor-0_17"]
    rows = [line for line in section[1:] if line[:11].strip().replace(".", "").isdigit()]
    assert len(rows) == 12
    text = "\n".join(section)
    assert text.count("destroyed") == 1 and "largest: at 49.9 s a generation-2 collection" in text
    assert section[-1] == "  … 4 smaller drops (all in --format json)"


def test_collections_name_library_frames_as_such(demo, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = render(demo, "text")
    assert "306 (gen 0: 279 · gen 1: 25 · gen 2: 2); 16 collections destroyed open connections" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("24.7 "))
    assert row.endswith("ThreadPoolExecutor-0_18   library: sqlalchemy/event/attr.py:349")
    assert "-packages/" not in text.split("GARBAGE COLLECTIONS")[1].split("DROPS")[0]


def test_server_count_max_and_sparkline(demo, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    lines = render(demo, "text").splitlines()
    assert "the server's PROCESSLIST showed at most 91 (at 49.5 s)" in " ".join(" ".join(lines[:25]).split())
    line = next(line for line in lines if line.startswith("  server (PROCESSLIST) max 91 at 49.5 s  "))
    spark = line[len("  server (PROCESSLIST) max 91 at 49.5 s  "):]
    assert len(line) == 100 and "█" in spark and set(spark) <= set(" ▁▂▃▄▅▆▇█")


def test_gc_warning_fix_does_not_contradict_engine_per_call(demo):
    gc = next(f for f in demo.findings if f.title.endswith("closed by the garbage collector, not by close()"))
    assert "Close what you open" not in gc.fix
    assert gc.fix.startswith("Share one Engine") and "reference cycle" in gc.fix


def test_sparkline_scales_to_its_width():
    from trace_quit.analysis.render_text import sparkline
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == " ▂▃▄▅▆▇█"  # 0 is blank, the max full
    assert sparkline(list(range(1000)), 10)[-1] == "█" and len(sparkline(list(range(1000)), 10)) == 10
    assert sparkline([], 10) == ""


def test_ascii_stream_gets_the_new_characters_too(demo):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    render(demo, "text", stream=stream)
    text = stream.buffer.getvalue().decode("ascii")
    from trace_quit.analysis.render_text import ASCII
    used = {ord(ch) for ch in render(demo, "text") if ord(ch) > 127} | {ord("←")}  # ← in call chains
    assert used <= set(ASCII)  # none left for 'replace' to mangle
    line = next(x for x in text.splitlines() if x.startswith("  server (PROCESSLIST) max 91"))
    assert "#" in line and set(line[len("  server (PROCESSLIST) max 91 at 49.5 s  "):]) <= set(" .:-=+*%#")
    assert "\n  * 500 connections opened" in text
