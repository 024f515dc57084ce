"""The summary's sentences: what the report says first, in a few lines (analysis/report.py calls
``summary``), and the sentences of a capture's bound and of the agent-only claims.
"""

from typing import Any, Dict, List

from trace_quit.tracer import events as ev
from trace_quit.tracer.capture import format_size

from ..model import largest_drop
from .aborted import summary_lines as aborted_lines
from .causes import CAUSES, CLIENT_CLOSES
from .collector import GENERATIONAL, generation_label
from .numbers import fmt_int, fmt_s, plural


def ended_words(c) -> str:
    """"N ended (M with COM_QUIT, K without)" of a model.Connections: the client's ends, which
    are not all COM_QUITs (PyMySQL's and the asyncio drivers' destructions send none)."""
    if not c.without_com_quit:
        return "%s ended (%s with COM_QUIT)" % (fmt_int(c.ended), "all" if c.ended > 1 else fmt_int(c.with_com_quit))
    return "%s ended (%s with COM_QUIT, %s without)" % (fmt_int(c.ended), fmt_int(c.with_com_quit),
                                                        fmt_int(c.without_com_quit))


def bound_line(info: Dict[str, Any]) -> str:
    """The sentence of a capture that reached its bound (analysis/bound.py: ``read``): where the
    detail stops and what was counted after it."""
    parts = []
    gens = info["closes_after_gc_by_generation"]
    for cause, n in sorted(info["closes_after"].items(), key=lambda kv: (-kv[1], kv[0])):
        text = "%s %s" % (cause, fmt_int(n))
        if cause == ev.GC and gens:
            text += " (%s)" % ", ".join("gen %s: %s" % (g, fmt_int(k)) for g, k in sorted(gens.items()) if k)
        parts.append(text)
    at = "+%s s" % fmt_s(info["t_s"]) if info.get("t_s") is not None else "an unknown time"
    out = "Capture bound reached at %s (--max-capture %s): %s not written; after it %s opened and " \
          "connection ends by cause (%s): %s" % (
              at, format_size(info["max_bytes"]), plural(info["not_written"], "event"), fmt_int(info["opened_after"]),
              "the kernel's" if info["closes_after_from"] == "kernel" else "the agent's", ", ".join(parts) or "none")
    if parts:
        out += " (counted in the totals; no detail for them)"
    return out + "."


def agent_only_line(info) -> str:
    """The summary's sentence about the agent-only claims (not counted in any total)."""
    fi = fmt_int
    causes = ", ".join("%s %s" % (cause, fi(n)) for cause, n in info["by_cause"].items())
    pids = ", ".join(str(p) for p in info["pids"]) + (" and %s more" % fi(info["pids_total"] - len(info["pids"]))
                                                      if info["pids_total"] > len(info["pids"]) else "")
    return ("%s not counted: the agent's channel reported %s the kernel never saw in that process (%s; pid %s). "
            "The program can write to that channel: this is its word alone." % (
                plural(info["total"], "agent-only claim"),
                "a connection" if info["total"] == 1 else "connections", causes, pids))


def nothing_opened(layers, program) -> str:
    """The summary's line when no MySQL connection was opened, with what the agent saw imported."""
    line = "No MySQL connection was opened"
    if layers.agent and "MySQLdb" not in program.modules and "pymysql" not in program.modules:
        # The agent sees MySQLdb when its connections module loads, at the first connect:
        # `import MySQLdb` (SQLAlchemy 2.x's create_engine does it) loads only the package.
        if "sqlalchemy" in program.modules:
            line += (" (SQLAlchemy %s was imported but never connected: neither MySQLdb's connections "
                     "module nor PyMySQL was loaded)" % program.modules["sqlalchemy"])
        else:
            line += " (neither MySQLdb's connections module nor PyMySQL was loaded)"
    return line + "."


def summary(connections, com_quit, gc, drops, patterns, engines, layers, program, findings=(), server=(),
            collector=GENERATIONAL, no_quit=None, bound_text=None, agent_only_text=None) -> List[str]:
    """The explanation in a few sentences: the verdict (the top finding) first, its fix last."""
    fi, pl = fmt_int, plural
    out = []
    after_counts = ([bound_text] if bound_text is not None else []) + (
        [agent_only_text] if agent_only_text is not None else []) + (
        aborted_lines(no_quit) if no_quit is not None else [])
    # The first screen of the text report is this list: what is wrong, where, what to change
    # (tests/unit/test_render_text.py::test_first_screen_has_verdict_place_and_fix).
    top = next((f for f in findings if f.severity in ("error", "warning")), None)
    if top is not None:
        out.append("%s: %s." % (top.severity.upper(), top.title))
    if not (connections.opened or connections.com_quit or connections.never_closed or connections.server
            or connections.open_at_end or connections.failed):
        out.append(nothing_opened(layers, program))
        if not layers.bpf:
            out.append("Missing layer: eBPF (see findings).")
        out[1:1] = after_counts
        if top is not None:  # the verdict's fix is always the last line (render_text.py relies on it)
            out.append("Fix: " + top.fix)
        return out
    out.append(counts_line(connections, com_quit, collector))
    # After the counts line: the counts past a capture's bound, the ends without COM_QUIT.
    out.extend(after_counts)
    if connections.never_closed:
        out.append("%s never closed (no COM_QUIT)." % pl(connections.never_closed, "connection was",
                                                          "connections were"))
    if connections.open_at_end and program.attached:
        out.append("%s still open at detach (the process went on: no end, no cause yet)." % pl(
            connections.open_at_end, "connection was", "connections were"))
    if connections.server:
        out.append("%s ended by the server first (KILL, wait_timeout, restart)." % pl(
            connections.server, "connection was", "connections were"))
    if connections.fork_copies:
        out.append("%s held by forked processes too: counted once each, by the first end of any of their "
                   "handles (%s)." % (pl(connections.forked, "connection was", "connections were"),
                                      pl(connections.fork_copies, "other handle end")))
    line = "At most %s open at once%s" % (
        pl(connections.max_live, "connection was", "connections were"),
        " (at %s s)" % fmt_s(connections.max_live_t_s) if connections.max_live_t_s is not None else "")
    if server:  # --dsn: the number the user watches, next to ours
        peak_t, peak = max(server, key=lambda s: s[1])
        line += "; the server's PROCESSLIST showed at most %s (at %s s)" % (
            fmt_int(int(peak)), fmt_s(peak_t))
    out.append(line + ".")
    big = largest_drop(drops)
    if big is not None:
        out.append("The largest drop (%s → %s): %s." % (fi(big.from_), fi(big.to), big.explanation))
    for d in drops:
        if d.at_exit:
            out.append("At exit (%s → %s): %s." % (fi(d.from_), fi(d.to), d.explanation))
    for p in patterns:
        if p.regular and p.drops:
            out.append("Periodically, %s." % p.text)
    if program.gc_disabled:
        out.append("gc.disable() was in effect (for some or all of the run): only explicit gc.collect() calls "
                   "collect cycles then, so connections in reference cycles stay open until one runs or the "
                   "program ends.")
    sites = engines_summary(engines, connections)
    # The verdict already names the one call site and its Engines: the first screen says it once.
    if not (top is not None and len(engines) == 1 and top.call_site == engines[0].call_site):
        out.extend(sites)
    missing = [name for name, on in (("eBPF", layers.bpf), ("agent", layers.agent)) if not on]
    if missing:
        out.append("Missing layer: %s (see findings)." % " and ".join(missing))
    if top is not None:
        out.append("Fix: " + top.fix)
    return out


def counts_line(connections, com_quit, collector=GENERATIONAL) -> str:
    """"N connections opened, M COM_QUITs: 7 by close(), ..." (PyMySQL: how many sent one)."""
    fi, pl = fmt_int, plural
    parts = []
    for cause in CLIENT_CLOSES:
        n = com_quit.by_cause.get(cause, 0)
        if cause == ev.EXPLICIT_CLOSE or n:
            text = "%s %s" % (fi(n), CAUSES[cause].words)
            if cause == ev.GC and n:
                text += " (%s)" % ", ".join("%s: %s" % (generation_label(g, collector), fi(k))
                                            for g, k in com_quit.gc_by_generation.items() if k)
            parts.append(text)
    # "N ended (M with COM_QUIT, K without)": not every client end is a COM_QUIT (PyMySQL's and
    # the asyncio drivers' destructions send none).
    line = "%s opened, %s" % (pl(connections.opened, "connection"), ended_words(connections))
    if parts:
        line += ": " + ", ".join(parts)
    return line + "."


def engines_summary(engines, connections) -> List[str]:
    """Which create_engine() call sites the connections belonged to (sites that opened none apart)."""
    fi, pl = fmt_int, plural
    used = [s for s in engines if s.connections]
    if not used:
        return []
    idle = len(engines) - len(used)
    rest = (" (%s opened no connection)" % pl(idle, "other call site")) if idle else ""
    with_engines = sum(s.connections for s in used)
    if len(used) == 1:
        top = used[0]
        every = with_engines == connections.opened + connections.opened_before_capture
        scope = "All" if every else fi(with_engines) + " of the"
        return ["%s %s belonged to %s created at %s (%s disposed)%s." % (
            scope, pl(with_engines, "connection"), pl(top.created, "Engine"), top.where, fi(top.disposed),
            rest)]
    parts = ["%s to %s created at %s" % (fi(s.connections), pl(s.created, "Engine"), s.where)
             for s in used[:3]]
    if len(used) > 3:
        parts.append("%s to %d more call sites" % (fi(sum(s.connections for s in used[3:])), len(used) - 3))
    # The counts say which site had most: no "most" for a site with a half or less.
    what = "call sites" if len({s.call_site for s in used}) == len(used) else "call chains"
    return ["%s belonged to Engines from %d %s%s: %s." % (
        pl(with_engines, "connection"), len(used), what, rest, "; ".join(parts))]
