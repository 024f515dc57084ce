"""What several commands share: our own lines on stdout/stderr, the error they raise, and the
files they read and write (the capture's name, the HTML page beside it, the checks on both)."""

import os
import sys

from trace_quit.tracer.errors import EX_DATAERR, EX_NOINPUT, TraceQuitError

CAPTURE_SUFFIX = ".tqcap"


class CliError(TraceQuitError):
    """A user-facing error: one sentence saying what is wrong and what to do."""

    def __init__(self, message, code):
        super().__init__(message, code)


def say(stream, text):
    """Write to our stderr/stdout; once it is gone (``… 2>&1 | head -c1``) stay silent.

    Losing our own messages must never change the exit status, which is the program's
    (tests/integration/test_trust_cli.py::test_closed_stderr_keeps_the_programs_status)."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):
        silence(stream)
        return False


def silence(stream):
    """Point the dead stream's fd at /dev/null: the interpreter's last flush then succeeds (no exit 120)."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def err(message):
    """One line of ours on stderr, ``trace-quit: …``."""
    from trace_quit.tracer.terminal import escape

    # Notes may quote what the program wrote (a rejected line's reason): data on the terminal.
    say(sys.stderr, "trace-quit: %s\n" % escape(message))


def html_path_for(capture):
    """Where ``run --format html`` writes its page: next to the capture, never over it
    (``-o run.html`` gets ``run.report.html``: tests/unit/test_cli.py)."""
    base, ext = os.path.splitext(capture)
    page = base + ".html"
    if os.path.abspath(page) == os.path.abspath(capture):
        page = base + ".report.html"
    return page


def write_report_file(reports, fmt, path, force=False, owner=None):
    """Render ``reports`` and write them whole into a 0600 file owned by ``owner`` (tracer/files.py)."""
    from trace_quit import analysis

    analysis.render(reports, fmt, path=path, color=False, force=force, owner=owner)


def check_capture_path(path):
    """A capture is a regular file: a FIFO or a device would block or never end (one line instead)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError("%s: no such capture file" % path, EX_NOINPUT) from None
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror), EX_NOINPUT) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "not a regular file")
        raise CliError("%s is %s, not a capture file: give the .tqcap file trace-quit wrote" % (path, kind), EX_DATAERR)
