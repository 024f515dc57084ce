"""The decision on one connection life, apart from its evidence.

analysis/evidence.py's ``Life`` keeps what each layer saw; analysis/attribute.py's ``decide`` turns
it into a ``Verdict`` and ``attribute_all`` hands every view an ``End``: the life with its verdict.
Nothing here or there writes the decision onto the life.
"""

import dataclasses
from typing import Any, List, Optional

from .evidence import Collection, Life


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How one connection life ended, and why: what ``decide`` returns."""

    cause: str
    generation: Optional[int]               # the collection's generation, for gc only
    collection: Optional[Collection]        # the collection that destroyed it (gc only)
    reason: Optional[str]                   # why, when a layer was missing, disagreed or the server ended it
    wire: Optional[str]                     # WIRE_STATES (None for never_closed)
    evidence: Optional[List[str]]           # SERVER_EVIDENCE kinds of a ``server`` cause
    t_end: int                              # mysql_close entry (kernel) else the agent's hook; process end
    end_tid: Optional[int] = None


def _decided(field: str) -> property:
    """An End's attribute read from its verdict's ``field``."""
    return property(lambda end: getattr(end.verdict, field) if end.verdict is not None else None)


class End:
    """One connection life and its ``Verdict``, as every view reads them: the decision (``cause``,
    ``generation``, ``wire_state``, ``t_end``, ...) is the verdict's, the evidence (``pid``,
    ``engine``, ``agent_end``, ...) the life's, read through. Deciding never writes on the life
    (analysis/evidence.py keeps evidence only). ``verdict`` None: still open, or a failed connect.
    ``copy_of``: the End counted for this fork family when it is not this one (count_families)."""

    __slots__ = ("life", "verdict", "copy_of")

    def __init__(self, life: Life, verdict: Optional[Verdict]):
        self.life = life
        self.verdict = verdict
        self.copy_of: Optional["End"] = None

    def __getattr__(self, name: str) -> Any:  # the evidence: what the life saw (AttributeError if nothing)
        return getattr(self.life, name)

    def __repr__(self) -> str:
        return "End(pid=%s, conn=%s, cause=%s)" % (self.life.pid, self.life.conn, self.cause)

    # The decision: the verdict's (None while open, and for a failed connect).
    cause = _decided("cause")
    generation = _decided("generation")
    collection = _decided("collection")
    reason = _decided("reason")
    wire_state = _decided("wire")
    t_end = _decided("t_end")
    end_tid = _decided("end_tid")
    server_evidence = _decided("evidence")  # the SERVER_EVIDENCE kinds of a ``server`` cause
