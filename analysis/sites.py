"""Call sites: which frame of a Python stack is the program's own, and how to print it.

The agent records stacks as lists of ``"file:line in func"`` strings, innermost frame first
(the order ``sys._getframe()`` walks ``f_back``). The program's frame is the innermost one
that is not in the standard library, site-packages, SQLAlchemy, a driver, pytest or trace-quit
itself: that is the line a user can change.
"""

import os
from typing import Optional, Sequence

from trace_quit.tracer.events import LIBRARY_PACKAGES

# Path fragments of code the user does not own. "/lib/python3" covers the standard library
# of every CPython 3.x layout (pyenv, Debian, venvs point back to it). The libraries are known
# by their package's directory wherever it is (a source checkout's lib/sqlalchemy/ too), the
# same list the agent checks by module name (tracer/events.py: LIBRARY_PACKAGES).
_LIBRARY_MARKERS = (
    "/site-packages/", "/dist-packages/", "/lib/python3", "/lib64/python3", "<frozen", "<string>",
    "/trace_quit/", "/tracer/agent/",
) + tuple("/%s/" % name.replace(".", "/") for name in LIBRARY_PACKAGES)


def frame_file(frame: str) -> str:
    """The file part of ``"file:line in func"``."""
    head = frame.split(" in ", 1)[0]
    file, _, line = head.rpartition(":")
    return file if line.isdigit() else head


def is_library_frame(frame: str) -> bool:
    """True for frames in the standard library, installed packages, the libraries or trace-quit;
    a relative path (``lib/sqlalchemy/engine/default.py``) is read from its first directory."""
    path = frame_file(frame)
    if not path.startswith(("/", "<")):
        path = "/" + path
    return any(m in path for m in _LIBRARY_MARKERS)


def app_frame(stack: Optional[Sequence]) -> Optional[str]:
    """The innermost frame of ``stack`` that belongs to the program (else the innermost frame)."""
    if not stack or not isinstance(stack, (list, tuple)):
        return None
    frames = [f for f in stack if isinstance(f, str) and f]
    if not frames:
        return None
    for f in frames:
        if not is_library_frame(f):
            return f
    return frames[0]


def program_frame(site: Optional[str]) -> Optional[str]:
    """``site`` when it is the program's own frame; a library frame is said to be one, with its
    path from the package on (``library: sqlalchemy/event/attr.py:349``)."""
    if not site or not is_library_frame(site):
        return site
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in site:
            return "library: " + site.split(marker, 1)[1]
    head, sep, tail = site.partition("/lib/python3")
    if sep and "/" in tail:
        return "library: " + tail.split("/", 1)[1]
    return "library: " + os.path.basename(site)


def relative_site(site: Optional[str], cwd: Optional[str]) -> Optional[str]:
    """``site`` with its path made relative to the program's working directory when under it."""
    if not site or not isinstance(site, str):
        return None
    if cwd and isinstance(cwd, str) and site.startswith(cwd.rstrip(os.sep) + os.sep):
        return site[len(cwd.rstrip(os.sep)) + 1:]
    return site


def shorten(text: str, width: int) -> str:
    """``text`` cut from the left with an ellipsis so it fits ``width`` (paths keep their tail)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[-width:] if width > 0 else ""
    return "…" + text[-(width - 1):]
