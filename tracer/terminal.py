"""Text from the traced program shown on a terminal: data, never control.

Thread names, paths, argv, SQL, host names and error messages come from a program we do not
trust. On a terminal a control character in them is an instruction (clear the screen, set the
window title, move the cursor over a line the report wrote), so every such string is shown
escaped (``\\x1b``, ``\\n``, ``\\u202e``) in the text report and the live status line. HTML,
JSON and Perfetto escape by their own rules. tests/unit/test_terminal.py pins the rule,
tests/security/test_output.py the attack as a user meets it.
"""

import copy
import dataclasses
import re

# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text
# (bidirectional overrides and isolates, zero-width joiners, the line/paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape_char(m):
    c = ord(m.group(0))
    return "\\x%02x" % c if c < 0x100 else "\\u%04x" % c


def escape(text):
    """``text`` with every control or format character written out as an escape (other values as they are)."""
    if isinstance(text, str) and _CONTROL.search(text):
        return _CONTROL.sub(_escape_char, text)
    return text


def escaped(value, skip=()):
    """A copy of ``value`` (a report, a list, a dict, a dataclass tree) with every string escaped;
    the attributes named in ``skip`` are kept as they are. Unchanged parts are shared, not copied."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list):
        out = [escaped(v) for v in value]
        return out if any(a is not b for a, b in zip(out, value)) else value
    if isinstance(value, tuple):
        out = tuple(escaped(v) for v in value)
        return out if any(a is not b for a, b in zip(out, value)) else value
    if isinstance(value, dict):
        pairs = [(escaped(k), escaped(v), k, v) for k, v in value.items()]
        if any(nk is not k or nv is not v for nk, nv, k, v in pairs):
            return {nk: nv for nk, nv, _, _ in pairs}
        return value
    names = None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
    elif hasattr(type(value), "__slots__") and not isinstance(value, (int, float, bool, type(None))):
        names = [n for n in type(value).__slots__ if hasattr(value, n)]
    if not names:
        return value
    changes = {}
    for name in names:
        if name in skip:
            continue
        old = getattr(value, name)
        new = escaped(old)
        if new is not old:
            changes[name] = new
    if not changes:
        return value
    out = copy.copy(value)
    for name, new in changes.items():
        object.__setattr__(out, name, new)
    return out
