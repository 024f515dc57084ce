"""The HTML report: one self-contained offline page (inline CSS and SVG plot, no scripts, no fetches).

Jinja2 template shipped as package data (templates/report.html.j2), autoescaped: every string
from a capture (argv, stacks, thread names) is untrusted. Several reports render side by side.
"""

import os
from typing import Sequence

from trace_quit.tracer import events as ev

from . import plot
from .model import Report
from .words.numbers import fmt_int, fmt_s

TEMPLATE = "report.html.j2"
MAX_QUITS = 200


def _env():
    import jinja2
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["n"] = lambda v: "?" if v is None else fmt_int(v)
    env.filters["s"] = lambda v: "?" if v is None else fmt_s(v)
    return env


def render(reports: Sequence[Report]) -> str:
    """The page for one report, or a comparison page for several."""
    import markupsafe
    # A comparison page: one time axis, one y scale and one COM_QUIT bin width for every plot.
    several = len(reports) > 1
    xmax = plot.common_xmax(reports) if several else None
    ymax = plot.common_ymax(reports) if several else None
    bin_s = plot.common_bin(reports) if several else None
    items = []
    for r in reports:
        items.append({
            "r": r,
            "svg": markupsafe.Markup(plot.timeline_svg(r, xmax, ymax, bin_s)),
            "quits": r.quits[:MAX_QUITS],
            "more_quits": max(0, len(r.quits) - MAX_QUITS),
            "largest": r.largest_drop(),
        })
    overlay = markupsafe.Markup(plot.comparison_svg(reports)) if len(reports) > 1 else None
    return _env().get_template(TEMPLATE).render(
        items=items, overlay=overlay, causes=ev.CAUSES, wire_states=ev.WIRE_STATES, colors=plot.CAUSE_COLORS,
        gen_colors={str(g): c for g, c in plot.GEN_COLORS.items()},
        comparison=len(reports) > 1, title=("trace-quit: " + ", ".join(r.name for r in reports)))
