"""Attribution: the one place where a connection's end gets its cause, generation and wire state.

``join`` collects evidence per connection life; ``decide`` turns one life's evidence into a
``Verdict`` (cause, generation, collection, reason, wire, evidence) without changing
anything; ``attribute_all`` decides every life (an ``End``: the life's evidence and its
verdict, which every view reads; the life itself keeps evidence only), and applies the rules
about which ends are counted (failed connects, fork copies). docs/causes.md explains the
table below with the evidence for each cause.

Before the table: with the kernel layer on, a life the kernel did not see in that process
(``agent_only_claim``) is an agent-only claim, decided but never counted (the program can
write the agent's records itself).

The decision table, in order (the first row that applies wins):

    1. no close seen by either layer  -> never_closed when the process ended, else still open
    2. the connect failed             -> not a COM_QUIT at all (counted as ``failed``)
    3. server evidence (below)        -> server, unless a client-detected error meets a
                                         confirmed COM_QUIT with no kernel sign: unknown
    4. both layers name a cause       -> that cause when they agree (gc: same generation);
                                         one layer's unknown yields to the other's cause;
                                         otherwise unknown, naming both
    5. one layer only                 -> its cause, the reason naming the missing layer

Each layer's own cause is evidence, not a verdict: the agent's ``conn_destroy.cause`` (gc
inside a ``gc.callbacks`` bracket on the thread, shutdown once the interpreter is
finalising -- after the program's last atexit handler --, else refcount) and the kernel's
``bpf_close.cause`` (its per-thread brackets). Precedence between them is decided here only.

Evidence comes from two independent layers:

- the agent: ``conn_close`` (an explicit ``close()``) or ``conn_destroy`` with the cause it
  saw in Python (gc + generation + collection id, refcount, shutdown);
- the kernel: ``bpf_close`` at ``mysql_close`` entry with the cause from the per-thread
  brackets of ``_mysql_ConnectionObject_close`` / ``_dealloc``, the GC probes and
  ``Py_FinalizeEx``; and the bytes sent inside ``mysql_close`` (``bpf_wire``).

Either layer alone is enough; when both speak and disagree the cause is ``unknown`` with a
reason naming what each said — never a guess. A kernel ``unknown`` (a bracket probe missing)
is missing evidence, not disagreement: the agent's cause stands and the reason says so.

``server`` — the server ended the connection before the client's COM_QUIT — overrides the
client-side cause of the later close (row 3) on the evidence analysis/server_end.py reads
(``server_evidence``) and explains (``SERVER_EVIDENCE``).

Fork copies (``count_families``): a forked child's handle on a connection its parent opened
is a life of its own, attributed as above; per server connection only one end is counted —
the first of its handles' ends that ended it (a client close or the server), else a handle
still open, else the last handle's process end (never_closed). The other handles' ends are
``copy_of`` it: listed with their own cause, counted apart (``Connections.fork_copies``).
"""

import dataclasses
from collections import Counter, defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .join import Collection, Life
from .server_end import describe as _describe
from .server_end import server_ended, server_evidence
from .verdict import End, Verdict

_AGENT_CAUSES = (ev.GC, ev.REFCOUNT, ev.SHUTDOWN, ev.SERVER)  # server: PyMySQL dropped its socket after an error
_BPF_CAUSES = (ev.EXPLICIT_CLOSE, ev.GC, ev.REFCOUNT, ev.SHUTDOWN)

#: First bytes of a send inside mysql_close that is the COM_QUIT packet itself.
COM_QUIT_HEAD = ev.COM_QUIT_BYTES.hex()


class Context:
    """What the capture as a whole says about the layers (for reasons and wire states)."""

    def __init__(self, agent: bool, bpf: bool, wire: bool, process_ended, kernel_drivers=None,
                 attached: bool = False):
        self.agent = agent            # the agent layer ran (events or header)
        self.bpf = bpf                # the eBPF layer ran
        self.wire = wire              # the send probes were attached: silence means not sent
        self.process_ended = process_ended  # pid -> t of its end, or None when not known to have ended
        # The drivers whose connections the kernel's probes see (kernel_drivers()); None: all.
        self.kernel_drivers = kernel_drivers
        self.attached = attached      # --pid: connections may have been open before the capture


def kernel_drivers(probes: Optional[Any], declared: bool = True) -> Optional[frozenset]:
    """The drivers whose connections the attached probes see, from the capture's ``bpf_probes``;
    without it (a synthetic or older capture) every driver when the header declares the eBPF
    layer (None), else none."""
    if probes is None or not isinstance(probes.probes, list):
        return None if declared else frozenset()
    attached = [p for p in probes.probes if isinstance(p, dict)]
    seen = set()
    if any(p.get("role") == "close" or p.get("symbol") == "mysql_close" for p in attached):
        seen.add(ev.DRIVER_MYSQLCLIENT)
    if any(p.get("role") == "tracepoint" for p in attached):
        seen.add(ev.DRIVER_PYMYSQL)  # the socket probes: a MySQL greeting read on a socket
    return frozenset(seen)


def claims_summary(claims: Sequence["End"], max_pids: int = 20) -> Dict[str, object]:
    """The agent-only claims as the report shows them: how many, by the cause claimed, which pids."""
    by_cause: Dict[str, int] = defaultdict(int)
    for life in claims:
        by_cause[life.cause if life.cause is not None else ("failed" if life.failed else "open")] += 1
    pids = sorted({life.pid for life in claims})
    return {"total": len(claims), "by_cause": dict(sorted(by_cause.items())), "pids": pids[:max_pids],
            "pids_total": len(pids)}


def agent_only_claim(life: Life, ctx: Context) -> bool:
    """With the kernel layer on, is ``life`` the agent's word alone, for a connection the kernel
    could have seen in that process and did not (no connect, no mysql_close, no socket)?

    The agent runs inside the program, and anything the program writes into the channel reads
    like the agent: such a life is reported as an agent-only claim, never counted
    (tests/unit/test_attribute.py, tests/security/test_forged_records.py). Not a claim: a
    connection of a driver no attached probe sees, and one open before --pid attached whose
    open the kernel could not see (its end it sees, except PyMySQL's socket it never knew)."""
    if not ctx.bpf or life.bpf_open is not None or life.bpf_end is not None:
        return False
    driver = life.driver
    if ctx.kernel_drivers is not None and driver not in ctx.kernel_drivers:
        return False
    opened = life.family.agent_open
    if ctx.attached and opened is not None and opened.k == ev.CONN_OPEN and opened.before_attach is True:
        if driver == ev.DRIVER_PYMYSQL or life.agent_end is None:
            return False
    if life.root is not None and life.agent_end is None:
        return agent_only_claim(life.root, ctx)  # a fork copy still open: its connection's
    return True


def _is_tls_record(head: str) -> bool:
    # A TLS record header: content type 0x14-0x17, then major version 0x03 (as probes.c checks).
    return len(head) >= 4 and head[:2] in ("14", "15", "16", "17") and head[2:4] == "03"


def wire_state(life: Life, ctx: Context) -> str:
    """confirmed | encrypted | not_sent | unobserved for one ended connection.

    Without the kernel's send probes nothing was observed, whatever else was recorded. With
    them, the kernel's own verdict at mysql_close return wins (it saw every send of the
    bracket); the sends recorded as events decide when that return was lost.
    """
    if life.bpf_end is not None and life.bpf_end.k == ev.BPF_SOCK_CLOSE:
        return life.bpf_ret.wire  # the socket probes' own verdict (PyMySQL: only close() writes COM_QUIT)
    if not ctx.wire or life.bpf_end is None:
        return ev.WIRE_UNOBSERVED
    verdict = life.bpf_ret.wire if life.bpf_ret is not None else None
    if verdict in ev.WIRE_STATES and verdict != ev.WIRE_UNOBSERVED:
        return verdict
    if life.wire:
        if any(h.startswith(COM_QUIT_HEAD) for h in life.wire):
            return ev.WIRE_CONFIRMED
        if all(_is_tls_record(h) for h in life.wire):
            return ev.WIRE_ENCRYPTED
        return ev.WIRE_NOT_SENT  # bytes were sent, but none was a COM_QUIT
    return ev.WIRE_NOT_SENT


#: A COM_QUIT the kernel saw on a socket outside the probed library, with no collection or
#: finalisation around it: a close() or a destructor (mysql-connector's C extension sends one
#: from its destructor), which the kernel cannot tell apart.
QUIT_BY_WHOM = ("COM_QUIT sent, by whom unknown: the kernel saw it outside any collection or "
                "finalisation, and no close() call was seen")


def _socket_context(a, a_cause, b, b_cause):
    """The kernel's socket-level close (``bpf_sock_close``) as evidence: (its cause, what to say).

    Its ``explicit_close`` means only "COM_QUIT written, no collection or finalisation around
    it", its ``refcount`` "closed without COM_QUIT outside any collection": a context, not a
    cause. With the agent's cause (a close() it saw, or which collection destroyed the
    object) that cause stands -- an event loop closes a socket a step after the collection
    that destroyed its connection (aiomysql) --; without it, a COM_QUIT is ``unknown``
    (QUIT_BY_WHOM). Returns ``(b_cause, None)`` when nothing changes; a said of "" means the
    layers agree."""
    if b is None or b.k != ev.BPF_SOCK_CLOSE or b_cause not in (ev.EXPLICIT_CLOSE, ev.REFCOUNT):
        return b_cause, None
    quit_sent = b_cause == ev.EXPLICIT_CLOSE
    if a is None or a_cause == ev.UNKNOWN:
        return (ev.UNKNOWN, QUIT_BY_WHOM) if quit_sent else (b_cause, None)
    if a_cause in (ev.EXPLICIT_CLOSE, ev.REFCOUNT):
        return a_cause, ""
    if not quit_sent and a_cause in (ev.GC, ev.SHUTDOWN, ev.SERVER):
        return a_cause, ("the agent said %s; the kernel saw the socket closed later, outside it "
                         "(an event loop closes a transport on a later step)" % a_cause)
    return b_cause, None


def decide(life: Life, ctx: Context) -> Optional[Verdict]:
    """The verdict on one life from its evidence (None: still open when the capture stopped)."""
    a = life.agent_end
    b = life.bpf_end
    if a is None and b is None:
        end = ctx.process_ended(life.pid)
        if end is None:
            return None  # still open when the capture stopped (truncated): no cause yet
        return Verdict(ev.NEVER_CLOSED, None, None, "the process ended with the connection open: no COM_QUIT "
                       "was sent", None, None, end)

    # The moment of the COM_QUIT: mysql_close entry when the kernel saw it, else the agent's hook.
    t_end, end_tid = (b.t, b.tid) if b is not None else (a.t, a.tid)
    a_cause, a_gen = _agent_said(life)
    b_cause, b_gen = _kernel_said(life)
    # A socket-level close is context, not a cause (_socket_context): it may change what the kernel said.
    b_cause, b_said = _socket_context(a, a_cause, b, b_cause)
    if a is not None and b is not None:
        if b_said is not None and a_cause != ev.UNKNOWN:
            cause, gen, reason = a_cause, a_gen, b_said or None
        else:
            cause, gen, reason = _both_said(a_cause, a_gen, b_cause, b_gen)
    elif a is not None:
        cause, gen, reason = a_cause, a_gen, _one_layer_reason(ctx, agent=True, unknown=a_cause == ev.UNKNOWN,
                                                             said=a.cause if a.k == ev.CONN_DESTROY else None)
    else:
        cause, gen, reason = b_cause, b_gen, _one_layer_reason(ctx, agent=False, unknown=b_cause == ev.UNKNOWN)
        if b_said:
            reason = b_said + "; " + _one_layer_reason(ctx, agent=False, unknown=False)

    collection: Optional[Collection] = None
    if cause == ev.GC:
        collection = life.agent_collection or life.bpf_collection
        if collection is not None and collection.src == ev.SRC_BPF and collection.twin is not None:
            collection = collection.twin  # report the agent's view: it has the id, thread and site
        if gen is None and collection is not None:
            gen = collection.gen

    wire = wire_state(life, ctx)
    evidence = server_evidence(life, ctx, wire)
    if evidence:
        cause, gen, collection, reason, evidence = server_ended(life, evidence, wire, cause, gen, collection, reason)
    return Verdict(cause, gen if cause == ev.GC else None, collection, reason, wire, evidence or None, t_end, end_tid)


def _reading(end, causes, collection):
    """One layer's reading of an end record: its cause (``unknown`` if not one that layer can
    name) and, for gc, the generation its record or its bracketing collection gives."""
    cause = end.cause if end.cause in causes else ev.UNKNOWN
    gen = None
    if cause == ev.GC:
        gen = end.gen
        if gen is None and collection is not None:
            gen = collection.gen
    return cause, gen


def _agent_said(life: Life):
    """The agent's own reading of the end: (cause, generation), (None, None) when it saw none."""
    a = life.agent_end
    if a is None:
        return None, None
    if a.k == ev.CONN_CLOSE:
        return ev.EXPLICIT_CLOSE, None
    return _reading(a, _AGENT_CAUSES, life.agent_collection)


def _kernel_said(life: Life):
    """The kernel's own reading of the end: (cause, generation), (None, None) when it saw none."""
    b = life.bpf_end
    if b is None:
        return None, None
    return _reading(b, _BPF_CAUSES, life.bpf_collection)


def _both_said(a_cause, a_gen, b_cause, b_gen):
    """Both layers saw the end: (cause, generation, reason) by the decision table's row 4."""
    if b_cause == ev.UNKNOWN and a_cause != ev.UNKNOWN:
        return a_cause, a_gen, "the agent said %s; the eBPF layer could not attribute it" % _describe(a_cause, a_gen)
    if a_cause == ev.UNKNOWN and b_cause != ev.UNKNOWN:
        return b_cause, b_gen, "the eBPF layer said %s; the agent could not attribute it" % _describe(b_cause, b_gen)
    if a_cause == b_cause and (a_gen is None or b_gen is None or a_gen == b_gen):
        reason = "neither the agent nor the eBPF layer could attribute it" if a_cause == ev.UNKNOWN else None
        return a_cause, a_gen if a_gen is not None else b_gen, reason
    return ev.UNKNOWN, None, "the layers disagree: the agent said %s, the eBPF layer said %s" % (
        _describe(a_cause, a_gen), _describe(b_cause, b_gen))


def _one_layer_reason(ctx: Context, agent: bool, unknown: bool, said=None) -> str:
    """Why only one layer speaks (row 5), and what it could not tell."""
    if agent:
        reason = ("seen by the agent only: the eBPF layer saw no mysql_close for it (lost event?)" if ctx.bpf
                  else "seen by the agent only: the eBPF layer was not attached")
        return "the agent reported an unknown cause (%r); %s" % (said, reason) if unknown else reason
    reason = ("seen by the eBPF layer only: the agent saw no close() or destruction for it" if ctx.agent
              else "seen by the eBPF layer only: the agent was not loaded")
    if unknown:
        reason = "the eBPF layer could not tell close() from a destruction (a bracket probe was missing); " + reason
    return reason


#: What the views that read the agent's records as they arrive know: the agent alone.
_AGENT_ONLY = Context(agent=True, bpf=False, wire=False, process_ended=lambda pid: None)


def decide_agent_end(records: Sequence[dict]) -> Optional[Verdict]:
    """The verdict on one connection from the agent's records of it alone, ending with its
    ``conn_close`` or ``conn_destroy`` (its ``conn_open`` and pool events before, when known):
    what the live status line and the pytest plugin's ledger count, joined and decided by the
    report's own rules."""
    from .join import join  # records of one connection: a small join

    lives = [lf for lf in join(list(records), {}).lives if lf.agent_end is not None]
    return decide(lives[-1], _AGENT_ONLY) if lives else None


@dataclasses.dataclass
class Attribution:
    """Every life's verdict (an ``End`` per life), and which ends are counted."""

    failed: int                    # failed connects: their mysql_close sends nothing, not a COM_QUIT
    ended: List[End]               # counted lives that ended (one per server connection)
    copies: List[End]              # ended fork-copy handles whose connection's end is counted on another
    counted: List[End]             # every life counted once (failed connects excluded)
    opened: int                    # counted lives whose open was seen
    opened_before_capture: int     # counted lives that ended but were opened before the capture
    open_at_end: int               # counted lives still open when the capture stopped
    families: Dict[int, List[End]]  # fork families (count_families)
    shared: List[List[End]]        # families whose connection more than one handle ended
    totals: "Totals" = dataclasses.field(default_factory=lambda: Totals())  # count(ended)
    claims: List[End] = dataclasses.field(default_factory=list)  # agent-only claims: never counted
    # collection -> the counted Ends it destroyed (a fork family's one counted end among them)
    destroyed: Dict[Collection, List[End]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Totals:
    """Counted connection ends, the numbers every view shows: the report and its renderers,
    Prometheus, the pytest plugin's ledger, the ends counted past a capture's bound."""

    by_cause: Counter = dataclasses.field(default_factory=Counter)          # cause -> ends
    gc_by_generation: Counter = dataclasses.field(default_factory=Counter)  # generation (None: unknown) -> gc ends
    wire: Counter = dataclasses.field(default_factory=Counter)              # wire state -> client ends
    by_process: Dict[int, Counter] = dataclasses.field(default_factory=dict)  # pid -> (cause, generation) -> ends

    def add(self, cause: str, generation: Optional[int], wire: Optional[str], pid: Optional[int], n: int = 1) -> None:
        """Count ``n`` ends of one cause (the generation only for gc; no wire for never_closed)."""
        cause = cause if cause in ev.CAUSES else ev.UNKNOWN
        generation = generation if cause == ev.GC else None
        self.by_cause[cause] += n
        if cause == ev.GC:
            self.gc_by_generation[generation] += n
        if cause != ev.NEVER_CLOSED:
            self.wire[wire if wire in ev.WIRE_STATES else ev.WIRE_UNOBSERVED] += n
        if pid is not None:
            self.by_process.setdefault(pid, Counter())[(cause, generation)] += n

    def by_cause_and_generation(self) -> Counter:
        """(cause, generation) -> ends, the generation for gc only: the key Prometheus labels by."""
        out: Counter = Counter()
        for counts in self.by_process.values():
            out.update(counts)
        return out


def count(ends: Iterable[End]) -> Totals:
    """The one count: counted ends (each with ``cause``, ``generation``, ``wire_state``, ``pid``,
    decided by ``decide``) into the totals by cause, generation, wire state and process."""
    totals = Totals()
    for end in ends:
        if end.cause is not None:
            totals.add(end.cause, end.generation, end.wire_state, end.pid)
    return totals


def attribute_all(lives: Sequence[Life], ctx: Context) -> Attribution:
    """Decide every life's verdict (its ``End``), then which ends count: failed connects are no
    COM_QUIT; of the handles a fork shares on one server connection only the first end counts.
    ``destroyed``: the Ends each collection destroyed."""
    failed = 0
    claims: List[End] = []
    kept: List[End] = []
    destroyed: Dict[Collection, List[End]] = {}
    for life in lives:
        if agent_only_claim(life, ctx):
            # its cause, as claimed (reported apart); no collection destroyed it, as far as we know
            claims.append(End(life, None if life.failed else decide(life, ctx)))
            continue
        if life.failed:
            failed += 1
            kept.append(End(life, None))
            continue
        end = End(life, decide(life, ctx))
        if end.collection is not None:
            destroyed.setdefault(end.collection, []).append(end)
        kept.append(end)
    families = count_families(kept, claims, destroyed)
    ended: List[End] = []
    copies: List[End] = []
    counted: List[End] = []
    open_at_end = before_capture = opened = 0
    for life in kept:
        if life.failed:
            continue
        if life.copy_of is not None:
            if life.cause is not None:
                copies.append(life)
            continue
        counted.append(life)
        if life.family.opened:
            opened += 1
        elif life.cause is not None:
            before_capture += 1
        if life.cause is None:
            open_at_end += 1
        else:
            ended.append(life)
    shared = [m for m in families.values() if sum(1 for lf in m if lf.cause is not None) > 1]
    return Attribution(failed=failed, ended=ended, copies=copies, counted=counted, opened=opened,
                       opened_before_capture=before_capture, open_at_end=open_at_end, families=families,
                       shared=shared, totals=count(sorted(ended, key=lambda lf: lf.t_end)), claims=claims,
                       destroyed={c: ends for c, ends in destroyed.items() if ends})


def _first_end(members: Sequence[End]) -> End:
    ends = [lf for lf in members if lf.cause is not None and lf.cause != ev.NEVER_CLOSED and lf.t_end is not None]
    if ends:
        return min(ends, key=lambda lf: lf.t_end)
    still_open = [lf for lf in members if lf.cause is None]
    if still_open:
        return still_open[0]
    return max(members, key=lambda lf: lf.t_end if lf.t_end is not None else -1)


def count_families(ends: Sequence[End], others: Sequence[End] = (),
                   destroyed: Optional[Dict[Collection, List[End]]] = None) -> Dict[int, List[End]]:
    """Mark every fork copy whose end is not the one counted (``copy_of``); returns the families.

    A family is a connection opened once and held by several processes through fork; only its
    first end is counted, because that is the one that ended it on the server (a COM_QUIT from
    any handle closes the server connection for all). A family's root is its End among ``ends``
    or ``others`` (the claims), else an undecided one. A copy not counted leaves the Ends its
    collection ``destroyed``.
    """
    of = {id(e.life): e for e in others}
    of.update((id(e.life), e) for e in ends)
    families: Dict[int, List[End]] = defaultdict(list)
    for end in ends:
        if end.life.root is not None:
            families[id(end.life.root)].append(end)
    out = {}
    for key, copies in families.items():
        root = copies[0].life.root
        members = [of.get(id(root)) or End(root, None)] + copies
        counted = _first_end(members)
        for lf in members:
            lf.copy_of = None if lf is counted else counted
            gone = destroyed.get(lf.collection) if destroyed is not None and lf is not counted else None
            if gone is not None and lf in gone:
                gone.remove(lf)
        out[key] = members
    return out
