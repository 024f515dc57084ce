"""The text report: fits the terminal (COLUMNS, else its size, else 100 columns); colour only when
asked (a tty without NO_COLOR)."""

import os
import shutil
import textwrap
from typing import List, Optional, Sequence

from trace_quit.tracer import events as ev
from trace_quit.tracer import terminal

from . import tests_view
from .model import Report
from .sites import program_frame, shorten
from .words.causes import CAUSES
from .words.collector import thresholds_text
from .words.numbers import fmt_int, fmt_s
from .words.summary import ended_words

WIDTH = 100          # files, pipes and anything that is not a terminal
MIN_WIDTH, MAX_WIDTH = 60, 160
SPARK = "▁▂▃▄▅▆▇█"
BAR = 30
MAX_COLLECTIONS = 10
MAX_DROPS = 12

_COLORS = {"bold": "1", "dim": "2", "red": "31", "yellow": "33", "cyan": "36", "green": "32", "magenta": "35"}
_SEVERITY_COLOR = {"error": "red", "warning": "yellow", "info": "cyan"}
_CAUSE_COLOR = {name: c.term_color for name, c in CAUSES.items()}

#: For streams that cannot encode them (LANG=C).
ASCII = str.maketrans(dict({"█": "#", "→": "->", "·": "|", "✓": "yes", "–": "-", "—": "-", "…": "...",
                       "×": "x", "≤": "<=", "═": "=", "←": "<-", "•": "*"},
                           **{c: ".:-=+*%#"[i] for i, c in enumerate(SPARK)}))


def terminal_width() -> int:
    """COLUMNS when set, else the terminal's width, else WIDTH; kept between MIN_WIDTH and MAX_WIDTH."""
    cols = os.environ.get("COLUMNS", "")
    n = int(cols) if cols.isdigit() else shutil.get_terminal_size((WIDTH, 24)).columns
    return max(MIN_WIDTH, min(MAX_WIDTH, n))


def sparkline(values: Sequence[float], width: int) -> str:
    """``values`` as one line of block characters, at most ``width`` wide (each cell a bin's max)."""
    if not values or width <= 0:
        return ""
    n = min(width, len(values))
    cells = [max(values[i * len(values) // n:max((i + 1) * len(values) // n, i * len(values) // n + 1)])
             for i in range(n)]
    top = max(cells) or 1
    return "".join(SPARK[min(len(SPARK) - 1, int(v * (len(SPARK) - 1) / top + 0.5))] if v else " "
                   for v in cells)


class _Out:
    def __init__(self, color: bool, width: int = WIDTH):
        self.color = color
        self.width = width
        self.lines: List[str] = []

    def c(self, text: str, *styles: str) -> str:
        if not self.color or not styles or not text:
            return text
        codes = ";".join(_COLORS[s] for s in styles if s in _COLORS)
        return "\x1b[%sm%s\x1b[0m" % (codes, text)

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def wrap(self, text: str, indent: int, first: Optional[str] = None, style: Sequence[str] = ()) -> None:
        """Wrap ``text`` to the width; ``first`` replaces the first line's indent (same visible width)."""
        pad = " " * indent
        lines = textwrap.wrap(text, self.width - indent, break_long_words=True, break_on_hyphens=False) or [""]
        for i, line in enumerate(lines):
            prefix = first if (i == 0 and first is not None) else pad
            self.add(prefix + self.c(line, *style))

    def heading(self, text: str) -> None:
        self.add()
        self.add(self.c(text, "bold"))


def _yes(on: bool) -> str:
    return "✓" if on else "–"


def _frame_cell(site: Optional[str], width: int) -> str:
    """The program's frame, or "library: <path>" cut from the left of its path, in ``width``."""
    text = program_frame(site) or "?"
    if text.startswith("library: ") and len(text) > width:
        return "library: " + shorten(text[len("library: "):], width - len("library: "))
    return shorten(text, width)


def _one(o: _Out, r: Report) -> None:
    for section in (_head, _summary, _connections, _causes, _processes, _tests_section, _collections, _drops, _engines,
                    _findings):
        section(o, r)


def _head(o: _Out, r: Report) -> None:
    """The program, the layers that ran."""
    p = r.program
    o.add(o.c("trace-quit report", "bold") + "  " + shorten(r.path, o.width - 40) + "  (" + r.capture_detail + ")")
    cmd = " ".join(p.argv) or "(argv unknown)"
    facts = []
    if p.exit_status is not None:
        facts.append("exit %s" % p.exit_status)
    if p.duration_s is not None:
        facts.append("%s s" % fmt_s(p.duration_s))
    if p.python:
        facts.append("Python " + p.python)
    for name in ("MySQLdb", "mysqlclient", "sqlalchemy", "SQLAlchemy"):
        if name in p.modules:
            facts.append("%s %s" % (name, p.modules[name]))
    if len(cmd) > o.width - 10:  # keep the program's start (what ran), cut its tail
        cmd = cmd[:o.width - 11] + "…"
    o.add("program   " + cmd)
    if facts:
        o.wrap(" · ".join(facts), 10)
    L = r.layers
    o.wrap("eBPF %s · agent %s · wire %s · server sampler %s · lost events %s" % (
        _yes(L.bpf), _yes(L.agent), _yes(L.wire), _yes(L.sampler), fmt_int(r.lost_events)), 10, first="layers    ")

    if p.attached:
        o.add(o.c("          attached to a running process: times are seconds since attach", "dim"))


def _summary(o: _Out, r: Report) -> None:
    """The verdict first and its fix last (words.summary() puts them there: no sentence is matched)."""
    o.heading("SUMMARY")
    top = next((f for f in r.findings if f.severity in ("error", "warning")), None)
    for i, line in enumerate(r.summary):
        if top is not None and i == 0:
            label = "%-8s" % top.severity.upper()
            o.wrap(top.title, 10, first="  " + o.c(label, "bold", _SEVERITY_COLOR.get(top.severity, "")),
                   style=("bold",))
        elif top is not None and i == len(r.summary) - 1:
            o.wrap(top.fix, 10, first="  " + o.c("fix:    ", "bold"))
        else:
            o.wrap(line, 4, first="  • ")


def _connections(o: _Out, r: Report) -> None:
    """Opened, ended, never closed, the server's count."""
    c = r.connections
    o.heading("CONNECTIONS")
    line = "  %s opened · %s · %s never closed · max %s live" % (
        fmt_int(c.opened), ended_words(c), fmt_int(c.never_closed), fmt_int(c.max_live))
    if c.max_live_t_s is not None:
        line += " (at %s s)" % fmt_s(c.max_live_t_s)
    o.wrap(line.strip(), 2, first="  ")
    extra = []
    if c.failed:
        extra.append("%s failed connects" % fmt_int(c.failed))
    nq = r.no_quit  # issue 19: client closes that sent no COM_QUIT (PyMySQL's destructions)
    if nq is not None and nq.without_quit - nq.by_cause.get("never_closed", 0):
        extra.append("%s of them closed without sending it (aborted clients)" % fmt_int(
            nq.without_quit - nq.by_cause.get("never_closed", 0)))
    if c.server:
        extra.append("%s ended by the server" % fmt_int(c.server))
    if c.open_at_end and r.bound is not None:  # --max-capture: their ends may be among the counted
        extra.append("%s with no end in the detail (open at the bound: ended after it, or never)"
                     % fmt_int(c.open_at_end))
    elif c.open_at_end:
        extra.append("%s %s" % (fmt_int(c.open_at_end), "open at detach" if r.program.attached
                                 else "still open when the capture stopped"))
    if c.opened_before_capture:
        extra.append("%s opened before the capture" % fmt_int(c.opened_before_capture))
    if c.forked:
        extra.append("%s also held by forked children (%s more handle %s, counted once per connection)" % (
            fmt_int(c.forked), fmt_int(c.fork_copies), "end" if c.fork_copies == 1 else "ends"))
    if extra:
        o.add("  " + " · ".join(extra))
    if r.timeline.server:
        counts = [n for _, n in r.timeline.server]
        peak_t, peak = max(r.timeline.server, key=lambda s: s[1])
        scope = ", user %s only" % r.timeline.server_own_user if r.timeline.server_own_user else ""
        label = "  server (PROCESSLIST%s) max %s at %s s  " % (scope, fmt_int(int(peak)), fmt_s(peak_t))
        o.add(label + sparkline(counts, o.width - len(label)))


def _causes(o: _Out, r: Report) -> None:
    """The counts by cause (attribute.count()), with each cause's colour."""
    q = r.com_quit
    o.heading("COM_QUIT BY CAUSE")
    w = q.wire
    o.add("  wire: %s confirmed · %s not sent · %s encrypted · %s unobserved" % (
        fmt_int(w.get("confirmed", 0)), fmt_int(w.get("not_sent", 0)), fmt_int(w.get("encrypted", 0)),
        fmt_int(w.get("unobserved", 0))))
    top = max(q.by_cause.values()) if q.by_cause else 0
    for cause in ev.CAUSES:
        n = q.by_cause.get(cause, 0)
        bar = "█" * (max(1, round(BAR * n / top)) if n and top else 0)
        line = "  %-15s %8s  %s" % (cause, fmt_int(n), o.c(bar, _CAUSE_COLOR.get(cause, "")))
        o.add(line.rstrip())
        if cause == ev.GC and n:
            gens = " · ".join("gen %s: %s" % (g, fmt_int(k)) for g, k in q.gc_by_generation.items() if k)
            visible = 2 + 15 + 1 + 8 + 2 + len(bar)
            if visible + 2 + len(gens) <= o.width:
                o.lines[-1] += "  " + gens
            else:
                o.wrap(gens, 28)


def _processes(o: _Out, r: Report) -> None:
    """Per process, when there are several."""
    if len(r.processes) > 1:  # a service's master and workers, forked children: each its own row
        o.heading("PROCESSES")
        o.add("  %8s  %8s  %11s  %s" % ("pid", "parent", "connections", "ended by"))
        for row in r.processes:
            causes = ", ".join("%s %s" % (c, fmt_int(n)) for c, n in sorted(row["by_cause"].items()))
            o.wrap("%8d  %8s  %11s  %s" % (row["pid"], row["parent"] or "", fmt_int(row["connections"]), causes),
                   36, first="  ")


def _tests_section(o: _Out, r: Report) -> None:
    if r.tests:  # a capture of the pytest plugin: connections per test
        _tests(o, r.tests)


def _collections(o: _Out, r: Report) -> None:
    """The collections that destroyed open connections."""
    g = r.gc
    o.heading("GARBAGE COLLECTIONS")
    n_closing = len(g.that_closed_connections)
    o.wrap("%s (%s); %s destroyed open connections" % (
        fmt_int(g.collections), " · ".join("gen %s: %s" % (k, fmt_int(v)) for k, v in g.by_generation.items()),
        "1 collection" if n_closing == 1 else "%s collections" % fmt_int(n_closing)), 2, first="  ")
    gc_line = thresholds_text(r.gc_thresholds)  # the program's thresholds (issue 14), always said
    if gc_line:
        o.wrap(gc_line, 4, first="  ")
    for caveat in (r.gc_collector or {}).get("caveats") or ():  # a collector whose numbers are no ages
        o.wrap("caveat, " + caveat, 4, first="  ")
    if r.program.gc_disabled:
        o.add("  gc.disable() was in effect: only explicit gc.collect() calls collected")
    if g.that_closed_connections:
        order = sorted(range(len(g.that_closed_connections)),
                       key=lambda i: -g.that_closed_connections[i].connections)[:MAX_COLLECTIONS]
        shown = [g.that_closed_connections[i] for i in sorted(order)]  # the largest, in time order
        tw = min(24, max(10, (o.width - 38) // 2 - 7))  # the thread column; the frame gets the rest
        row = "  %9s  %3s  %9s  %5s  %-" + str(tw) + "s  %s"
        o.add(o.c(row % ("t (s)", "gen", "objects", "conns", "thread",
                                                      "triggered at"), "dim"))
        for s in shown:
            thread = s.thread or "?"
            if len(thread) > tw:  # names differ at their end (ThreadPoolExecutor-0_15): keep it
                thread = shorten(thread, tw)
            o.add((row % (
                fmt_s(s.t_s), "?" if s.generation is None else s.generation,
                "?" if s.collected is None else fmt_int(s.collected), fmt_int(s.connections),
                thread, _frame_cell(s.triggered_at, o.width - 38 - tw))).rstrip())
        if len(g.that_closed_connections) > len(shown):
            o.add(o.c("  … %s more (all in --format json)" % fmt_int(len(g.that_closed_connections) - len(shown)),
                      "dim"))


def _drops(o: _Out, r: Report) -> None:
    """The sudden falls of the live count, the largest explained."""
    o.heading("DROPS IN LIVE CONNECTIONS")
    if not r.drops:
        o.add("  none")
    drops = r.drops
    if len(drops) > MAX_DROPS:
        drops = sorted(sorted(drops, key=lambda d: -d.fall)[:MAX_DROPS], key=lambda d: d.t_s)
    # A table; the long sentence once, for the largest (the others differ only in numbers).
    if drops:
        o.add(o.c("  %9s  %-13s  %7s  %-10s  %s" % ("t (s)", "live", "ms", "cause", "thread"), "dim"))
    for d in drops:
        what = d.cause + (" gen %d" % d.generation if d.generation is not None else "")
        live = "%s → %s" % (fmt_int(d.from_), fmt_int(d.to))
        thread = shorten(d.thread or "", max(8, o.width - 50))
        o.add("  %9s  %-13s  %7s  %s" % (
            fmt_s(d.t_s), live, "%.1f" % d.duration_ms,
            o.c("%-10s  " % what if thread else what, _CAUSE_COLOR.get(d.cause, "")) + thread))
    big = r.largest_drop()
    if big is not None:
        o.wrap("largest: " + big.explanation, 4, first="  ")
        if big.why_now:  # platform (issue 14): why the collection ran then
            o.wrap("why then: " + big.why_now["text"], 4, first="  ")
    if len(r.drops) > len(drops):
        o.add(o.c("  … %s smaller drops (all in --format json)" % fmt_int(len(r.drops) - len(drops)), "dim"))


def _engines(o: _Out, r: Report) -> None:
    """The repeating patterns and the create_engine() call sites."""
    if r.patterns:
        o.heading("PATTERNS")
        for pat in r.patterns:
            o.wrap(pat.text, 4, first="  • ")

    if r.engines:
        o.heading("ENGINES (create_engine() call sites)")
        for s in r.engines:
            o.wrap(s.where, 4, first="  ")
            if len(s.callers) > 2:
                o.wrap("call chain: " + " ← ".join(s.callers), 6)
            pool = s.pool_class or "pool ?"
            if s.pool_size is not None:
                pool += " %d+%s" % (s.pool_size, s.max_overflow if s.max_overflow is not None else "?")
            o.wrap("%s created · %s disposed · %s connections · %s · up to %s alive at once, holding up to %s "
                   "connections" % (fmt_int(s.created), fmt_int(s.disposed), fmt_int(s.connections), pool,
                                    fmt_int(s.max_live_engines), fmt_int(s.max_live_connections)), 6)
            if s.connections_by_cause:
                o.wrap("ended by: " + ", ".join("%s %s" % (k, fmt_int(v))
                                                for k, v in s.connections_by_cause.items()), 6)


def _findings(o: _Out, r: Report) -> None:
    """What is wrong, with the evidence and the fix."""
    o.heading("FINDINGS")
    if not r.findings:
        o.add("  none")
    for f in r.findings:
        label = "%-7s " % f.severity.upper()
        o.wrap(f.title, 10, first="  " + o.c(label, "bold", _SEVERITY_COLOR.get(f.severity, "")), style=("bold",))
        o.wrap(f.evidence, 10)
        o.wrap("fix: " + f.fix, 10)


def _tests(o: _Out, rows, limit: int = 40) -> None:
    """The tests that opened connections: those with leaks first (a long suite: the first ``limit``)."""
    o.heading("CONNECTIONS PER TEST")
    ranked = sorted(rows, key=lambda row: 0 if tests_view.leaks(row) else 1)  # stable: run order
    cells = [(fmt_int(row["connections"]), ", ".join("%s %s" % (c, fmt_int(n)) for c, n in row["by_cause"].items()))
             for row in ranked[:limit]]
    causes_w = max(len(c) for _, c in cells)
    o.add("  %5s  %-*s  %s" % ("conns", causes_w, "ended by", "test"))
    for (n, causes), row in zip(cells, ranked):
        head = "  %5s  %-*s  " % (n, causes_w, causes)
        o.add(head + shorten(row["nodeid"], max(o.width - len(head), 20)))
    if len(ranked) > limit:
        o.add("  ... %d more test(s) (--format json lists them all)" % (len(ranked) - limit))


def _comparison(o: _Out, reports: Sequence[Report]) -> None:
    n = len(reports)
    label_w = 22
    col = max(10, (o.width - label_w) // n - 1)
    o.add(o.c("trace-quit comparison of %d captures" % n, "bold"))

    def row(label, values, style=()):
        cells = "".join(shorten(str(v), col).rjust(col + 1) for v in values)
        o.add(o.c(label.ljust(label_w) + cells, *style))

    row("", [r.name for r in reports], ("bold",))
    row("status", [r.capture_status for r in reports])
    row("duration (s)", [fmt_s(r.program.duration_s) if r.program.duration_s is not None else "?" for r in reports])
    row("opened", [fmt_int(r.connections.opened) for r in reports])
    row("max live", [fmt_int(r.connections.max_live) for r in reports])
    for cause in ev.CAUSES:
        row("  " + cause, [fmt_int(r.com_quit.by_cause.get(cause, 0)) for r in reports])
    for gen in ("0", "1", "2"):
        row("    gc gen " + gen, [fmt_int(r.com_quit.gc_by_generation.get(gen, 0)) for r in reports])
    row("collections", [fmt_int(r.gc.collections) for r in reports])
    row("drops", [fmt_int(len(r.drops)) for r in reports])
    row("largest drop", [("%d→%d" % (r.largest_drop().from_, r.largest_drop().to)) if r.largest_drop() else "–"
                         for r in reports])
    row("engines created", [fmt_int(sum(s.created for s in r.engines)) for r in reports])
    row("findings (errors)", ["%d (%d)" % (len(r.findings), sum(1 for f in r.findings if f.severity == "error"))
                              for r in reports])
    row("wire confirmed", [fmt_int(r.com_quit.wire.get("confirmed", 0)) for r in reports])
    row("lost events", [fmt_int(r.lost_events) for r in reports])


def render(reports: Sequence[Report], color: bool = False, width: Optional[int] = None) -> str:
    """The text of one report, or a comparison table followed by each report; ``width`` columns
    (default: the terminal's, see terminal_width).

    Every string the program could have chosen (thread names, paths, argv, SQL, URLs, notes)
    is shown escaped (tracer/terminal.py): the report is data on the terminal, never control.
    ``quits`` is not printed here, so its (possibly million) records are not copied."""
    reports = [terminal.escaped(r, skip=("quits",)) for r in reports]
    o = _Out(color, width or terminal_width())
    if len(reports) > 1:
        _comparison(o, reports)
        for r in reports:
            o.add()
            o.add("═" * o.width)
            _one(o, r)
    elif reports:
        _one(o, reports[0])
    return "\n".join(o.lines) + "\n"
