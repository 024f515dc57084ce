"""render(reports, fmt, stream/path, color): the one entry point of every renderer."""

import os
from typing import IO, Optional, Sequence, Tuple, Union

from .model import Report

FORMATS = ("text", "json", "html", "perfetto")


def want_color(stream: Optional[IO]) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def render(reports: Union[Report, Sequence[Report]], fmt: str = "text", stream: Optional[IO] = None,
           path: Optional[str] = None, color: Optional[bool] = None, force: bool = False,
           owner: Optional[Tuple[int, int]] = None) -> str:
    """Render one report (or several side by side) as text, json, html or a Perfetto trace.

    Writes to ``path`` or ``stream`` when given, and returns the text. ``path`` is written
    whole by the tracer's one safe writer (tracer/files.py: 0600, chowned to ``owner``, never
    through a symlink, never over an existing file unless ``force``, nothing left on failure).
    ``color=None`` means: colour when ``stream`` is a tty; NO_COLOR set always means none (text only).
    """
    if isinstance(reports, Report):
        reports = [reports]
    reports = list(reports)
    if not reports:
        raise ValueError("render() needs at least one report")
    if fmt not in FORMATS:
        raise ValueError("unknown format %r: use one of %s" % (fmt, ", ".join(FORMATS)))
    if fmt == "text":
        from . import render_text
        if color is None:
            color = path is None and want_color(stream)
        # NO_COLOR wins even over color=True (https://no-color.org): callers pass isatty().
        out = render_text.render(reports, color=bool(color) and not os.environ.get("NO_COLOR"),
                                 width=render_text.WIDTH if path is not None else None)  # a file: 100
    elif fmt == "json":
        from . import render_json
        out = render_json.render(reports)
    elif fmt == "perfetto":
        from . import render_perfetto
        out = render_perfetto.render(reports)
    else:
        from . import render_html
        out = render_html.render(reports)
    if path is not None:
        from trace_quit.tracer.files import write_private

        write_private(path, out, force=force, owner=owner)
    elif stream is not None:
        _write(stream, out, fmt)
    return out


def _write(stream: IO, text: str, fmt: str) -> None:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "█→·✓–…×═".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        if fmt == "text":
            from .render_text import ASCII
            text = text.translate(ASCII)
        text = text.encode(encoding, "replace").decode(encoding, "replace")
    stream.write(text)
    try:
        stream.flush()
    except (AttributeError, ValueError, OSError):
        pass
