"""Text the program chose is data on a terminal, never control (tracer/terminal.py)."""

import re

import synth
from trace_quit import analysis
from trace_quit.analysis.capture import load
from trace_quit.tracer import events as ev
from trace_quit.tracer import terminal
from trace_quit.tracer.status import StatusLine, Tally

#: Clear the screen, set the window title, move up a line and overwrite it, a newline and a
#: forged report line, a right-to-left override, a C1 CSI.
HOSTILE = "w\x1b[2J\x1b]0;pwned\x07\x1b[1A\r0 leaks\nERROR: none\u202e\x9b31m"
#: Our own colours: the only escape sequences a coloured report may hold.
_OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_escape_writes_every_control_character_out():
    assert terminal.escape("plain: é → ✓") == "plain: é → ✓"
    out = terminal.escape(HOSTILE)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202e]", out)
    assert out.startswith("w\\x1b[2J\\x1b]0;pwned\\x07") and "\\x0a" in out and "\\u202e" in out


def _hostile_capture(path):
    s = synth.SynthCapture(path, argv=["python", "app\x1b]0;title\x07.py"], cwd="/srv/\x1b[2Japp")
    engine = s.engine(0.05, site="/srv/app/db\x1b[2J.py:3 in get\x1b[1A")
    conns = [s.open(0.1 + i * 0.01, engine=engine, stack=["/srv/app/m\x1bc.py:9 in f\x07"]) for i in range(3)]
    s.close(0.2, conns[0], ev.EXPLICIT_CLOSE, thread=HOSTILE, stack=["/srv/app/x\x1b[2J.py:1 in g"])
    s.collection(0.3, 2, destroy=conns[1:], thread=HOSTILE, site="/srv/app/\x1b[2Jgc.py:7 in h")
    s.note(0.35, "note from \x1b[2J the program")
    return s.finish(0.4)


def test_the_text_report_holds_no_control_character_from_the_program(tmp_path):
    report = analysis.build_report(load(_hostile_capture(str(tmp_path / "h.tqcap"))))
    plain = analysis.render(report, "text", color=False)
    assert "\x1b" not in plain and "\x07" not in plain and "\u202e" not in plain and "\x9b" not in plain
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f]", plain)  # newlines are the report's own
    assert "\\x1b[2J" in plain                                # shown, as data
    coloured = analysis.render(report, "text", color=True)
    assert "\x1b" not in _OUR_SGR.sub("", coloured) and "\x07" not in coloured
    # The report itself is untouched: JSON and HTML escape by their own rules.
    assert report.quits and any(q.thread == HOSTILE for q in report.quits)


class _Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def close(self):
        pass


def test_the_status_line_shows_causes_and_generations_from_a_closed_set():
    tally = Tally()
    tally.add({"k": ev.CONN_OPEN, "pid": 1, "t": 1, "conn": 5})
    tally.add({"k": ev.CONN_DESTROY, "pid": 1, "t": 2, "conn": 5, "cause": "gc\x1b[2J\x1b]0;x\x07"})
    tally.add({"k": ev.GC_COUNTS, "pid": 1, "by_gen": {"0": 3, "\x1b[2J": 5, "7": 9}})
    term = _Terminal()
    line = StatusLine(tally, stream=term, interval_s=0)
    line.maybe_show()
    drawn = term.text
    assert drawn.startswith("\r\x1b[2K") and "\x1b" not in drawn[len("\r\x1b[2K"):]
    assert "COM_QUIT unknown 1" in drawn and "gen0 3 gen1 0 gen2 0" in drawn


def test_the_tracers_own_lines_on_stderr_show_quoted_program_text_escaped(capsys):
    from trace_quit.tracer.commands.common import err

    err("3 lines were rejected (first: kind 'x\x1b]0;t\x07')")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]0;t\\x07" in err and err.endswith("\n")


def test_the_rejected_lines_note_names_five_processes_at_most():
    import os

    from trace_quit.tracer.channel import AgentChannel

    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        for pid in range(1, 500):
            ch.reject({"pid": pid}, "forged")
    finally:
        ch.close()
    text = ch.rejected_note()
    assert text.startswith("499 lines were rejected") and "494 more processes: 494" in text and len(text) < 400
