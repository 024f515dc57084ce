"""The timeline plot (matplotlib, Agg): live connections, server count, collections, COM_QUITs by cause.

Drawn from the finished report's Timeline only. Returned as an SVG document (dense artists
rasterised inside it, so a million-event capture still gives a small file) or PNG bytes.
"""

import io
from typing import Optional, Sequence

from trace_quit.tracer import events as ev

from .model import Report
from .timeline import nice_bin, quit_histogram, quit_key
from .words.causes import CAUSES

CAUSE_COLORS = {name: c.color for name, c in CAUSES.items()}
GEN_COLORS = {0: "#90a4ae", 1: "#fb8c00", 2: "#c62828"}
#: Told apart by more than colour: each cause's bars carry a hatch, each generation's
#: collection lines a dash pattern (tests/unit/test_render_html.py pins both).
CAUSE_HATCHES = {name: c.hatch for name, c in CAUSES.items()}
GEN_HATCHES = {0: "++", 1: "xx", 2: "**"}
GEN_STYLES = {0: ":", 1: "--", 2: "-"}


def series_color(key: str) -> str:
    """Colour of a COM_QUIT histogram series ("gc.2" takes its generation's colour)."""
    cause, _, gen = key.partition(".")
    if cause == ev.GC and gen.isdigit() and int(gen) in GEN_COLORS:
        return GEN_COLORS[int(gen)]
    return CAUSE_COLORS.get(cause, "#9e9e9e")


def series_hatch(key: str) -> str:
    """Hatch of a COM_QUIT histogram series (a generation's own for "gc.N")."""
    cause, _, gen = key.partition(".")
    if cause == ev.GC and gen.isdigit() and int(gen) in GEN_HATCHES:
        return GEN_HATCHES[int(gen)]
    return CAUSE_HATCHES.get(cause, "")


def series_label(key: str) -> str:
    """Legend text of a histogram series."""
    cause, _, gen = key.partition(".")
    return "gc gen %s" % gen if cause == ev.GC else cause


def plain_text(text: str) -> str:
    """``text`` as matplotlib shows it literally: ``$`` would open math text (a capture named
    ``x$\\frac$.tqcap`` crashed the HTML report; tests/unit/test_files.py pins it)."""
    return str(text).replace("$", r"\$")  # outside math text only "\$" is special


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def figure(report: Report, xmax: Optional[float] = None, ymax: Optional[float] = None,
           bin_s: Optional[float] = None):
    """The matplotlib Figure for one report (x axis in seconds since start).

    A comparison page passes one ``xmax``, ``ymax`` and COM_QUIT ``bin_s`` for all its plots."""
    plt = _pyplot()
    tl = report.timeline
    fig, (ax, axg, axq) = plt.subplots(
        3, 1, figsize=(10, 5.6), sharex=True, gridspec_kw={"height_ratios": [5, 1, 2.2], "hspace": 0.08})
    dense = len(tl.live) > 2000

    # Live client-side connections (steps), server samples, and collections that closed connections.
    if tl.live:
        xs = [p[0] for p in tl.live]
        ys = [p[1] for p in tl.live]
        end = max(tl.end_s, xs[-1])
        xs.append(end)
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", color="#1565c0", lw=1.2, label="live connections (client)",
                rasterized=dense)
    if tl.server:
        ax.plot([p[0] for p in tl.server], [p[1] for p in tl.server], ".", ms=2, color="#555555",
                label="server PROCESSLIST count", rasterized=len(tl.server) > 2000)
    ts, gens, destroyed = tl.collections.get("t_s", []), tl.collections.get("generation", []), \
        tl.collections.get("destroyed", [])
    for gen in (2, 1, 0):
        xs = [t for t, g, d in zip(ts, gens, destroyed) if g == gen and d]
        if xs:
            ax.vlines(xs, 0, 1, transform=ax.get_xaxis_transform(), colors=GEN_COLORS[gen],
                      linestyles=GEN_STYLES[gen], lw=1.6 if gen == 2 else 0.8, alpha=0.8 if gen == 2 else 0.5,
                      label="gen-%d collection that closed connections" % gen, rasterized=len(xs) > 2000)
    ax.set_ylabel("connections")
    ax.set_ylim(0, ymax if ymax else max(_peak(report) * 1.12, 1))
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.85)
    ax.set_title(plain_text(report.name), fontsize=10, loc="left")

    # Every collection as a tick, one row per generation.
    rows, colors, offsets = [], [], []
    for gen in (0, 1, 2):
        xs = [t for t, g in zip(ts, gens) if g == gen]
        rows.append(xs)
        colors.append(GEN_COLORS[gen])
        offsets.append(gen)
    if any(rows):
        axg.eventplot(rows, lineoffsets=offsets, linelengths=0.8, colors=colors, linewidths=0.6,
                      rasterized=sum(map(len, rows)) > 2000)
    axg.set_yticks([0, 1, 2])
    axg.set_yticklabels(["gen 0", "gen 1", "gen 2"], fontsize=7)
    axg.set_ylim(-0.6, 2.6)
    axg.set_ylabel("GC", fontsize=8)

    # COM_QUITs per bin, stacked by cause.
    width, quit_bins = tl.quit_bin_s, tl.quit_bins
    if bin_s and bin_s != width:
        width, quit_bins = quit_histogram(
            [(q.t_s, quit_key(q.cause, q.generation)) for q in report.quits if q.counted and q.t_s is not None],
            tl.end_s, width=bin_s)
    bottom = None
    for key, counts in quit_bins.items():
        if not counts:
            continue
        xs = [i * width for i in range(len(counts))]
        if bottom is None:
            bottom = [0] * len(counts)
        if len(bottom) < len(counts):
            bottom.extend([0] * (len(counts) - len(bottom)))
        axq.bar(xs, counts, width=width, bottom=bottom[:len(counts)], align="edge",
                color=series_color(key), label=series_label(key), hatch=series_hatch(key),
                edgecolor="#ffffff", linewidth=0)
        bottom = [b + c for b, c in zip(bottom, counts)] + bottom[len(counts):]
    axq.set_ylabel("COM_QUIT / %gs" % width, fontsize=8)
    if bottom:
        axq.set_ylim(0, max(bottom) * 1.25 + 1)  # headroom: the tallest bar never touches the legend
    axq.set_xlabel("seconds since the program started")
    if quit_bins:
        axq.legend(loc="upper left", fontsize=7, ncol=4, framealpha=0.85)
    axq.grid(alpha=0.25)
    right = xmax if xmax else max(tl.end_s, 1e-3)
    ax.set_xlim(0, right * 1.01)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.94, bottom=0.09)
    return fig


def _svg(fig, title: str, desc: str) -> str:
    """``fig`` as an inline SVG element (the XML prolog dropped), then closed.

    It carries ``role="img"`` with a ``<title>`` and a ``<desc>`` that say in words what it
    shows, for screen readers (ids unique per page: several plots share one)."""
    global _SVG_SERIAL
    buf = io.StringIO()
    fig.savefig(buf, format="svg", dpi=110)
    _pyplot().close(fig)
    svg = buf.getvalue()
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    end = svg.find(">")
    if svg.startswith("<svg") and end > 0:
        _SVG_SERIAL += 1
        ident = "tq-plot-%d" % _SVG_SERIAL
        svg = ('%s role="img" aria-labelledby="%s-t %s-d">\n<title id="%s-t">%s</title>\n<desc id="%s-d">%s</desc>%s'
               % (svg[:end], ident, ident, ident, _xml(title), ident, _xml(desc), svg[end + 1:]))
    return svg


_SVG_SERIAL = 0


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _peak(report: Report) -> float:
    """The highest connection count the plot shows (client's live, or the server's samples)."""
    tl = report.timeline
    return max([p[1] for p in tl.live] + [p[1] for p in tl.server] + [0])


def _describe(report: Report) -> str:
    """The timeline plot in words: the peak, the largest drop, how COM_QUITs divide by cause."""
    parts = ["Live client-side connections over %.1f s, at most %d." % (report.timeline.end_s,
                                                                        report.connections.max_live)]
    largest = report.largest_drop()
    if largest is not None:
        why = largest.cause + (" generation %d" % largest.generation if largest.generation is not None else "")
        parts.append("Largest drop %d to %d at %.1f s (%s)." % (largest.from_, largest.to, largest.t_s, why))
    causes = ", ".join("%s %d" % (c, n) for c, n in report.com_quit.by_cause.items() if n)
    if causes:
        parts.append("COM_QUITs by cause: %s." % causes)
    return " ".join(parts)


def timeline_svg(report: Report, xmax: Optional[float] = None, ymax: Optional[float] = None,
                 bin_s: Optional[float] = None) -> str:
    """The plot as a standalone SVG document (text)."""
    return _svg(figure(report, xmax, ymax, bin_s), "Timeline of %s" % report.name, _describe(report))


def common_xmax(reports: Sequence[Report]) -> float:
    """One x range for side-by-side plots."""
    return max([r.timeline.end_s for r in reports] + [1e-3])


def common_ymax(reports: Sequence[Report]) -> float:
    """One y range for side-by-side plots, with headroom."""
    return max(max(_peak(r) for r in reports) * 1.12, 1)


def common_bin(reports: Sequence[Report]) -> float:
    """One COM_QUIT bin width for side-by-side plots (the longest capture's)."""
    return nice_bin(common_xmax(reports))


OVERLAY_COLORS = ("#c62828", "#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#455a64")


def comparison_svg(reports: Sequence[Report]) -> str:
    """Every capture's live connections on one axis (the server's count dotted when sampled)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for i, r in enumerate(reports):
        color = OVERLAY_COLORS[i % len(OVERLAY_COLORS)]
        tl = r.timeline
        if tl.live:
            xs = [p[0] for p in tl.live] + [max(tl.end_s, tl.live[-1][0])]
            ys = [p[1] for p in tl.live] + [tl.live[-1][1]]
            ax.step(xs, ys, where="post", color=color, lw=1.1,
                    label="%s (max %d)" % (plain_text(r.name), r.connections.max_live), rasterized=len(xs) > 2000)
        if tl.server:
            ax.plot([p[0] for p in tl.server], [p[1] for p in tl.server], ".", ms=1.5, color=color, alpha=0.5,
                    rasterized=len(tl.server) > 2000)
    ax.set_xlabel("seconds since the program started")
    ax.set_ylabel("live connections")
    ax.set_ylim(0, common_ymax(reports))
    ax.set_xlim(0, common_xmax(reports) * 1.01)
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.96, bottom=0.14)
    desc = " ".join("%s: at most %d live connections." % (r.name, r.connections.max_live) for r in reports)
    return _svg(fig, "Live connections of %d captures on one time axis" % len(reports), desc)
