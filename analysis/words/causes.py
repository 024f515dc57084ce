"""The causes' names, words and colours: every view (the summary, the text report, HTML, the
plot, Perfetto) reads this ``CAUSES`` registry instead of a table of its own.
"""

import dataclasses
from typing import Dict

from trace_quit.tracer import events as ev


@dataclasses.dataclass(frozen=True)
class Cause:
    """What the report says about one cause, and how it looks."""

    name: str
    client_closed: bool    # the client ended the connection (else the server did, or nothing)
    sends_com_quit: bool   # mysqlclient sends COM_QUIT for it (PyMySQL only from close(): docs/pymysql.md)
    words: str             # how a count of them reads: "7 by close()"
    words_without_quit: str  # ... in "closed without COM_QUIT (...)"
    color: str             # the HTML page and the plot
    hatch: str             # the plot: told apart by more than colour
    term_color: str        # the text report on a colour terminal


CAUSES: Dict[str, Cause] = {c.name: c for c in (
    Cause(ev.EXPLICIT_CLOSE, True, True, "by close()", "by close() (its COM_QUIT did not go out)",
          "#2e7d32", "", "green"),
    Cause(ev.REFCOUNT, True, True, "when their last reference went away", "when their last reference went away",
          "#0288d1", "//", "cyan"),
    Cause(ev.GC, True, True, "by the garbage collector", "by the garbage collector", "#c62828", "xx", "red"),
    Cause(ev.SHUTDOWN, True, True, "at interpreter shutdown", "at interpreter shutdown", "#7b1fa2", "..",
          "magenta"),
    Cause(ev.NEVER_CLOSED, False, False, "never closed", "never closed", "#f9a825", "\\\\", "yellow"),
    Cause(ev.SERVER, False, False, "ended by the server first", "ended by the server first", "#6d4c41", "--",
          "yellow"),
    Cause(ev.UNKNOWN, True, True, "for an unknown cause", "for an unknown cause", "#9e9e9e", "oo", "dim"),
)}
assert set(CAUSES) == set(ev.CAUSES)

#: The connection ends that are a client-side close (the client sent, or meant to send, COM_QUIT).
CLIENT_CLOSES = tuple(c for c in ev.CAUSES if CAUSES[c].client_closed)
