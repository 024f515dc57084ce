"""The report model: one dataclass tree that every renderer receives finished.

Field names follow the report JSON contract (docs/report.schema.json) wherever one exists; ``render_json``
maps the few that cannot (``from`` is a keyword) and is the only place the contract is spelt.
Times are ``t_s``: seconds since the traced program started (``child_start``).
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

SCHEMA = "trace-quit/report/1"

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass
class Program:
    """The traced program: what ran, how it ended, how long it took."""

    argv: List[str]
    exit_status: Optional[int]
    duration_s: Optional[float]
    pid: Optional[int] = None
    python: Optional[str] = None
    modules: Dict[str, str] = dataclasses.field(default_factory=dict)  # MySQLdb, sqlalchemy versions
    gc_disabled: bool = False   # the agent saw gc.disable() in effect (agent_start.gc_enabled or gc_counts.enabled)
    attached: bool = False      # --pid: the capture began at attach, so times are since attach


@dataclasses.dataclass
class Layers:
    """Which recording layers ran (header, confirmed by the events present)."""

    bpf: bool
    agent: bool
    sampler: bool
    wire: bool = False  # the kernel's send probes: without them COM_QUITs are "unobserved"


@dataclasses.dataclass
class Connections:
    """Connection counts over the whole capture."""

    opened: int
    com_quit: int              # client closes (explicit_close, refcount, gc, shutdown, unknown)
    never_closed: int
    max_live: int
    max_live_t_s: Optional[float] = None
    failed: int = 0            # connects that failed (their mysql_close sends nothing)
    server: int = 0            # ended by the server first
    open_at_end: int = 0       # still open when a truncated capture stopped (no cause yet)
    opened_before_capture: int = 0  # closes whose open was not recorded
    forked: int = 0            # connections that forked children also held a handle on
    fork_copies: int = 0       # handle ends not counted: their connection's first end is (fork)
    # The client's ends (com_quit's count, under a truer name): with a COM_QUIT or without one
    # (an aborted client to the server: PyMySQL's or aiomysql's destructions).
    ended: int = 0
    with_com_quit: int = 0
    without_com_quit: int = 0


@dataclasses.dataclass
class ComQuit:
    """Every connection end by cause, the GC ones by generation, and what the wire showed."""

    by_cause: Dict[str, int]
    gc_by_generation: Dict[str, int]
    wire: Dict[str, int]


@dataclasses.dataclass
class CollectionSummary:
    """One garbage collection that destroyed open connections."""

    t_s: float
    generation: Optional[int]
    collected: Optional[int]
    connections: int
    thread: Optional[str]
    triggered_at: Optional[str]
    pid: int
    cid: Optional[int] = None
    duration_ms: Optional[float] = None
    engines: int = 0           # distinct Engines the destroyed connections belonged to
    call_sites: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Gc:
    """Garbage collections: how many, of which generation, and the ones that closed connections."""

    collections: int
    by_generation: Dict[str, int]
    that_closed_connections: List[CollectionSummary]


@dataclasses.dataclass
class Drop:
    """A sudden fall in live client-side connections, explained."""

    t_s: float
    from_: int
    to: int
    duration_ms: float
    cause: str
    generation: Optional[int]
    connections: int           # connection ends in this fall (opens during it make from-to smaller)
    explanation: str
    thread: Optional[str] = None
    triggered_at: Optional[str] = None
    collected: Optional[int] = None
    call_sites: List[str] = dataclasses.field(default_factory=list)
    # platform (issue 14): the collection behind a gc drop, and why it ran then (analysis/gcwhy.py).
    pid: Optional[int] = None
    cid: Optional[int] = None
    why_now: Optional[Dict[str, Any]] = None

    @property
    def at_exit(self) -> bool:
        """The process ending (shutdown, never closed): not a fall the running program made."""
        return self.cause in ("shutdown", "never_closed")

    @property
    def fall(self) -> int:
        """How many live connections it took away."""
        return self.from_ - self.to


def largest_drop(drops: Sequence["Drop"], at_exit: bool = False) -> Optional["Drop"]:
    """The one definition of "the largest drop": the greatest fall (then the most ends), among
    the drops while the program ran unless ``at_exit``; None when there is none."""
    running = [d for d in drops if at_exit or not d.at_exit]
    return max(running, key=lambda d: (d.fall, d.connections)) if running else None


@dataclasses.dataclass
class Pattern:
    """A repeating way connections die (e.g. every generation-1 collection)."""

    cause: str
    generation: Optional[int]
    collections: int
    every_s: float             # median interval
    connections_each: int      # median connections per occurrence
    min_each: int
    max_each: int
    total: int
    regular: bool
    text: str
    drops: int = 0             # occurrences that were drops (a regular pattern of drops: a saw-tooth)


@dataclasses.dataclass
class EngineSite:
    """All the Engines created at one create_engine() call site."""

    call_site: str
    created: int
    disposed: int
    connections: int
    destroyed: Dict[str, int] = dataclasses.field(default_factory=dict)   # engine_destroy causes
    pool_class: Optional[str] = None
    pool_size: Optional[int] = None
    max_overflow: Optional[int] = None
    max_live_engines: int = 0
    max_live_connections: int = 0
    max_live_connections_t_s: Optional[float] = None
    engines_at_max: int = 0     # distinct Engines holding those connections at that moment
    connections_by_cause: Dict[str, int] = dataclasses.field(default_factory=dict)
    gc_by_generation: Dict[str, int] = dataclasses.field(default_factory=dict)
    urls: List[str] = dataclasses.field(default_factory=list)
    chain: List[str] = dataclasses.field(default_factory=list)  # the program's frames, outermost first

    @property
    def callers(self) -> List[str]:
        """The program's frames that led to the call site, nearest first."""
        return [f for f in reversed(self.chain) if f != self.call_site]

    @property
    def where(self) -> str:
        """The call site and its two nearest callers (the whole chain is in ``chain``): short
        enough for a finding's title on the report's first screen."""
        callers = self.callers
        if not callers:
            return self.call_site
        return "%s (called from %s%s)" % (self.call_site, " ← ".join(callers[:2]), " ← …" if len(callers) > 2 else "")


@dataclasses.dataclass
class Finding:
    """Something to fix, with the evidence and the fix, tied to a call site when there is one."""

    severity: str              # error | warning | info
    title: str
    evidence: str
    fix: str
    call_site: Optional[str] = None
    count: Optional[int] = None


class Quit:
    """One connection end: the COM_QUIT (or its absence) with its cause and evidence."""

    __slots__ = ("t_s", "pid", "tid", "conn", "cause", "generation", "collection", "wire",
                 "thread", "engine_site", "opened_t_s", "stack", "reason", "closed_by", "evidence",
                 "counted", "inherited_from", "counted_pid", "origin")

    def __init__(self, t_s, pid, tid, conn, cause, generation, collection, wire, thread,
                 engine_site, opened_t_s, stack, reason, closed_by, evidence=None, counted=True,
                 inherited_from=None, counted_pid=None, origin=None):
        self.t_s = t_s
        self.pid = pid
        self.tid = tid
        self.conn = conn
        self.cause = cause
        self.generation = generation
        self.collection = collection
        self.wire = wire
        self.thread = thread
        self.engine_site = engine_site
        self.opened_t_s = opened_t_s
        self.stack = stack
        self.reason = reason
        self.closed_by = closed_by
        self.evidence = evidence              # server cause: evidence types (attribute.SERVER_EVIDENCE)
        self.counted = counted                # False: a fork copy whose connection's end is counted elsewhere
        self.origin = origin                  # "before attach": open when --pid attached (else None)
        self.inherited_from = inherited_from  # a forked child's handle: the parent pid
        self.counted_pid = counted_pid        # not counted: the pid whose end of the connection is


@dataclasses.dataclass
class Timeline:
    """Plot-ready series (downsampled, drops kept): live connections, server count, collections, COM_QUITs."""

    live: List[List[float]]                 # [t_s, live] steps
    server: List[List[float]]               # [t_s, count] samples
    collections: Dict[str, List[Any]]       # t_s, generation, destroyed (parallel lists)
    quit_bin_s: float                       # width of the COM_QUIT histogram bins
    quit_bins: Dict[str, List[int]]         # cause ("gc.N" per generation) -> counts per bin i (from i * quit_bin_s)
    end_s: float = 0.0
    server_own_user: Optional[str] = None   # the server count covers only this user's connections (no PROCESS)


@dataclasses.dataclass
class NoQuit:
    """Connections ended without COM_QUIT (aborted clients to the server), and per-driver counts."""

    without_quit: int = 0
    by_cause: Dict[str, int] = dataclasses.field(default_factory=dict)
    by_driver: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)   # driver -> cause -> n
    without_quit_by_driver: Dict[str, int] = dataclasses.field(default_factory=dict)
    server_aborted_clients: Optional[int] = None   # the sampler's Aborted_clients increase (--dsn)
    unprobed_drivers: List[str] = dataclasses.field(default_factory=list)  # imported, not probed
    outside_library: int = 0                       # kernel-only MySQL sockets outside libmysqlclient


@dataclasses.dataclass
class Report:
    """Everything one capture says, explained."""

    path: str
    capture_status: str         # complete | truncated | damaged
    capture_detail: str         # e.g. "damaged at line 812"
    program: Program
    layers: Layers
    connections: Connections
    com_quit: ComQuit
    gc: Gc
    drops: List[Drop]
    patterns: List[Pattern]
    engines: List[EngineSite]
    findings: List[Finding]
    lost_events: int
    lost_by_source: Dict[str, int]
    summary: List[str]
    quits: List[Quit]
    timeline: Timeline
    notes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    events: int = 0
    malformed: int = 0
    revision: int = 0             # the capture's schema revision (its header's version)
    lacks: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # kind -> fields that revision lacks
    schema: str = SCHEMA
    no_quit: Optional[NoQuit] = None   # issue 19: aborted clients, drivers (analysis/aborted.py)
    gc_thresholds: Optional[Dict[str, Any]] = None  # platform (issue 14): analysis/gcwhy.Thresholds.summary
    #: The program's collector and what each layer could not say because of it (gcwhy.Thresholds.caveats).
    gc_collector: Optional[Dict[str, Any]] = None
    processes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # by_process(): per traced pid
    # With the kernel layer on: connections and ends only the agent's channel reported
    # (analysis/attribute.agent_only_claim), never counted: {"total", "by_cause", "pids", "pids_total"}.
    agent_only: Dict[str, Any] = dataclasses.field(default_factory=dict)
    bound: Optional[Dict[str, Any]] = None  # --max-capture reached: analysis/bound.py (None: not reached)
    tests: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # pytest plugin: analysis/tests_view.py

    def largest_drop(self) -> Optional[Drop]:
        """The largest fall while the program ran (exit-time teardown excluded), else None."""
        return largest_drop(self.drops)

    @property
    def name(self) -> str:
        """A short label for comparisons: the capture's file name."""
        import os
        return os.path.basename(self.path) or self.path
