"""The capture reader: header, events, trailer — tolerant of damage, strict about versions.

A capture without a trailer is *truncated* (the tracer was killed), not rejected; so is one
whose last line was cut off mid-write (what a SIGKILLed writer leaves). A complete line that
is not a JSON object ends the readable part (everything after it is *damaged*).
Any other format version is refused with one sentence. Never raises anything but
``CaptureError`` for bad input.

Every record is checked once, here, against its kind's declared fields (tracer/events.py:
``KINDS``), so the analysis reads fields without coercing them. A record that does not
match is left out and counted (``Capture.invalid``); a capture of an older revision is read,
and the fields its records lack because a later revision added them are listed
(``Capture.lacks``), never filled in.
"""

import dataclasses
import gc
import json
import os
from typing import Any, Dict, Iterator, List, Optional

from trace_quit.tracer import events as ev
from trace_quit.tracer import records as rec

#: A single line longer than this is damage, not an event (protects memory on bad input).
MAX_LINE_BYTES = 1 << 20


class CaptureError(Exception):
    """The file is not a capture this version can read; the message is one sentence."""


@dataclasses.dataclass
class Capture:
    """A capture as read: header, events in file order (typed records: tracer/records.py),
    trailer (None when truncated). The header and the trailer are documents, kept as dicts."""

    path: str
    header: Dict[str, Any]
    events: List[Any]
    trailer: Optional[Dict[str, Any]]
    damaged_at_line: Optional[int] = None  # first unreadable line number (1-based), if any
    partial_line: Optional[int] = None  # a last line cut off mid-write (truncated, not damaged)
    invalid: Dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> records left out
    invalid_examples: List[str] = dataclasses.field(default_factory=list)  # the first few reasons
    lacks: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # kind -> fields a revision lacks

    @property
    def revision(self) -> int:
        """The capture's schema revision (the header's ``version``)."""
        return self.header["version"]

    @property
    def truncated(self) -> bool:
        """True when the tracer never wrote its trailer."""
        return self.trailer is None

    @property
    def status(self) -> str:
        """'complete', 'truncated' or 'damaged at line N' — for reports."""
        if self.damaged_at_line is not None:
            return "damaged at line %d" % self.damaged_at_line
        return "truncated" if self.truncated else "complete"


def _lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            yield line


def read_header(path: str) -> Dict[str, Any]:
    """Read and validate only the header record."""
    try:
        first = next(_lines(path), b"")
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e)) from None
    return _parse_header(path, first)


def _decode(raw: bytes) -> Any:
    """One JSON value, or None when the bytes are not one (never raises)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the C stack guard
        return None


def _parse_header(path: str, first: bytes) -> Dict[str, Any]:
    if not first:
        raise CaptureError("%s is empty: it is not a trace-quit capture" % path)
    header = _decode(first) if len(first) <= MAX_LINE_BYTES else None
    if not isinstance(header, dict) or header.get("format") != ev.FORMAT:
        raise CaptureError("%s is not a trace-quit capture (no capture header on its first line)" % path)
    version = header.get("version")
    if type(version) is not int or version not in ev.READABLE:
        raise CaptureError(
            "%s is a version %s capture; this trace-quit reads version %s: use a trace-quit that matches"
            % (path, version, " or ".join(str(v) for v in ev.READABLE)))
    try:
        ev.check_header(header)
    except ev.SchemaError as e:
        raise CaptureError("%s has a malformed capture header (%s)" % (path, e)) from None
    return header


def iter_events(path: str) -> Iterator[Any]:
    """Yield the typed event records of a validated capture (header and trailer excluded),
    streaming; records that do not match their kind's schema are left out, as ``load`` does."""
    revision = read_header(path)["version"]
    for item in _scan(path):
        if isinstance(item, dict) and item["k"] != ev.TRAILER:
            try:
                yield rec.typed(ev.check(item, revision))
            except ev.SchemaError:
                continue


class _Sharer:
    """Build each record's typed record (tracer/records.py) with short strings and small ints
    shared across records.

    json.loads makes fresh key and value objects for every line; as dicts a million events cost
    ~1.1 KB each. A typed record keeps no keys, and sharing the values (one dict lookup per field)
    brings a 1M-event capture's report to ~0.4 GB (tests/bench/report_1m.py). Lines are still
    parsed one by one: joining them into one JSON array would share keys for free, but crafted
    lines could then merge and hide damage.
    """

    MAX_VALUES = 100_000  # bound the value cache on adversarial input

    def __init__(self):
        self.values: Dict[Any, Any] = {}

    def __call__(self, record: Dict[str, Any]) -> Any:
        cls = rec.type_of(record["k"])
        values = self.values
        if len(values) > self.MAX_VALUES:
            return _new(cls, map(record.get, cls._fields))
        return _new(cls, [values.setdefault(v, v) if (v.__class__ is str and len(v) < 24)
                          or (v.__class__ is int and -1_000_000 < v < 1_000_000) else v
                          for v in map(record.get, cls._fields)])


_new = tuple.__new__


def iter_records(path: str) -> Iterator[Dict[str, Any]]:
    """Every record in file order for ``trace-quit dump``: header, events, trailer, then a
    ``{"k": "damaged", "line": N}`` or ``{"k": "partial", "line": N}`` marker if reading stopped early."""
    try:
        yield read_header(path)
        for item in _scan(path):
            if isinstance(item, tuple):
                yield {"k": item[0], "line": item[1]}
                return
            yield item
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e)) from None


def _scan(path: str):
    """Yield header-checked records; yields ('damaged' | 'partial', lineno) once on the first bad line.

    'partial' is a last line without its newline (a writer killed mid-write): truncation.
    """
    lines = _lines(path)
    try:
        first = next(lines, b"")
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e)) from None
    _parse_header(path, first)
    lineno = 1
    for raw in lines:
        lineno += 1
        if len(raw) > MAX_LINE_BYTES:
            yield ("damaged", lineno)  # an overlong line is damage, not an event
            return
        if not raw.endswith(b"\n"):
            # Only the last line can lack its newline (readline): a killed writer's partial line.
            yield ("partial", lineno)
            return
        record = _decode(raw)
        if not isinstance(record, dict) or not isinstance(record.get("k"), str):
            yield ("damaged", lineno)
            return
        yield record
        if record["k"] == ev.TRAILER and _is_trailer(record):
            # Anything after the trailer is garbage appended to a finished capture.
            try:
                if next(lines, None) is not None:
                    yield ("damaged", lineno + 1)
            except OSError:
                pass
            return


def _is_trailer(record: Dict[str, Any]) -> bool:
    """The writer's own trailer (a forged one, passed on by the agent channel, does not end the capture)."""
    try:
        ev.check(record)
    except ev.SchemaError:
        return False
    return True


def load(path: str, raw: bool = False) -> Capture:
    """Read a whole capture into memory: its events typed (tracer/records.py), or, ``raw``, as
    written (checked dicts, every key kept: for tools and tests that look at what was written)."""
    if not os.path.exists(path):
        raise CaptureError("%s does not exist" % path)
    if os.path.isdir(path):
        raise CaptureError("%s is a directory, not a capture file" % path)
    header = read_header(path)
    normal = Normaliser(header["version"])
    share = _Sharer()
    events: List[Any] = []
    trailer = None
    damaged = None
    partial = None
    # Reading makes only acyclic objects that stay alive: the cyclic collector would only walk
    # them again and again as they pile up (~0.5 s a million records, tests/bench/report_1m.py).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for item in _scan(path):
            if isinstance(item, tuple):
                if item[0] == "partial":
                    partial = item[1]
                else:
                    damaged = item[1]
                break
            if not normal(item):
                continue
            if item["k"] == ev.TRAILER:
                trailer = item  # a document, as the header is: kept as written (its keys, nested objects)
            else:
                events.append(item if raw else share(item))
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e)) from None
    finally:
        if collecting:
            gc.enable()
    return normal.capture(path, header, events, trailer, damaged_at_line=damaged, partial_line=partial)


class Normaliser:
    """Checks records of one capture revision against the schema, counting what it leaves out."""

    MAX_EXAMPLES = 5

    def __init__(self, revision: int):
        self.revision = revision
        self.invalid: Dict[str, int] = {}
        self.examples: List[str] = []
        self._lacks: Dict[str, set] = {}
        self._older = revision < ev.VERSION

    def __call__(self, record: Any) -> bool:
        """True when ``record`` is a well-formed event of this revision (then kept as it is)."""
        try:
            ev.check(record, self.revision)
        except ev.SchemaError as e:
            kind = record.get("k") if isinstance(record, dict) and isinstance(record.get("k"), str) else "?"
            self.invalid[kind] = self.invalid.get(kind, 0) + 1
            if len(self.examples) < self.MAX_EXAMPLES:
                self.examples.append(str(e))
            return False
        if self._older:
            kind = record["k"]
            for name in ev.added_after(kind, self.revision):
                if name not in record:
                    self._lacks.setdefault(kind, set()).add(name)
        return True

    def capture(self, path: str, header: Dict[str, Any], events: List[Any],
                trailer: Optional[Dict[str, Any]], **kwargs: Any) -> Capture:
        return Capture(path=path, header=header, events=events, trailer=trailer, invalid=dict(self.invalid),
                       invalid_examples=list(self.examples),
                       lacks={k: sorted(v) for k, v in sorted(self._lacks.items())}, **kwargs)


def from_records(path: str, header: Dict[str, Any], records: List[Any],
                 trailer: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Capture:
    """A Capture of in-memory records, normalised as ``load`` does (tests, tools)."""
    revision = header.get("version") if type(header.get("version")) is int else ev.VERSION
    normal = Normaliser(revision)
    events = [rec.typed(r) for r in records if normal(r)]
    if trailer is not None and not normal(dict(trailer, k=ev.TRAILER)):
        trailer = None
    return normal.capture(path, header, events, trailer, **kwargs)


def describe_lacks(capture: Capture) -> Optional[str]:
    """One sentence naming what an older revision's records lack, or None."""
    if not capture.lacks:
        return None
    return "a revision-%d capture: its records lack %s (added by a later revision: unknown here, not false)" % (
        capture.revision, "; ".join("%s.%s" % (kind, ", ".join(fields)) for kind, fields in capture.lacks.items()))
