"""Explaining: capture reader, join/attribution, timeline, drops, report model, renderers.

The public API (the CLI calls only this)::

    from trace_quit.analysis import load, build_report, render
    report = build_report(load("capture.tq"))
    render([report], "text", stream=sys.stdout)        # or "json", "html"; path= to write a file
    for record in iter_records("capture.tq"): ...      # trace-quit dump

Nothing here imports bcc or needs root: a capture made on a server is reported anywhere.
"""

from .capture import Capture, CaptureError, iter_records, load
from .model import Report
from .render import FORMATS, render
from .report import build_report

__all__ = ["Capture", "CaptureError", "FORMATS", "Report", "build_report", "iter_records", "load", "render"]
