"""Attribution: the one place where a connection's end gets its cause, generation and wire state.

``join`` collects evidence per connection life; ``decide`` turns one life's evidence into a
``Verdict`` (cause, generation, collection, reason, wire, evidence) without changing
anything; ``attribute_all`` decides every life, applies the verdicts, and applies the rules
about which ends are counted (failed connects, fork copies). docs/causes.md explains the
table below with the evidence for each cause.

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
client-side cause of the later close (which the reason still names) on any of this evidence
(``Life.server_evidence`` lists which, ``SERVER_EVIDENCE`` says what each means):

- ``kernel_socket_dropped``: at mysql_close entry the client library no longer had a socket
  (``bpf_close.sock`` False), which libmysqlclient and libmariadb do after a failed read or
  write (``bpf_close.last_errno`` 2013, 2006, 2055), on a connection whose connect succeeded
  (``bpf_connect`` ok or the agent's ``conn_open``, and no ``conn_fail``);
- ``kernel_not_sent``: such a connection, the send probes attached, and the kernel's verdict
  at mysql_close return is that no COM_QUIT went out, and no send was even tried and failed;
- ``kernel_send_failed``: the COM_QUIT send inside mysql_close failed with EPIPE/ECONNRESET
  (``bpf_close_ret.send_err``, ``bpf_wire.ret``);
- ``kernel_eof``: the socket saw the server's EOF or a reset before the client's close
  (``bpf_peer_end``, ``bpf_close.eof``);
- ``agent_error``: the pool invalidated the connection, before its close, with a server-gone
  error (``join.SERVER_GONE_CODES``: 2006, 2013, 2055, 4031, 1927, 1053). A program without
  SQLAlchemy has no pool events: only the kernel's evidence counts then.

- ``kernel_fin_first``: over TCP, the server's FIN had arrived before mysql_close was entered
  (``bpf_close_ret.fin_first``): an idle connection the server ended (KILL, wait_timeout, stop).

Not evidence: ``bpf_close_ret.tcp_from == "close_wait"``. It is the state the client's close()
syscall found, after the COM_QUIT was sent, and on loopback the server often answers a COM_QUIT
with its FIN before the client reaches close(): 13 of 39 known-causes closes and 126 of 300
hidden-threads closes over TCP, all with a confirmed COM_QUIT, showed it. Only the state
*before* the COM_QUIT (``fin_first``, above) tells an idle connection the server had already
ended from a normal close.

One disagreement is possible: a client-detected error (2006/2013/2055: the library drops
the socket on it) and yet the kernel saw the COM_QUIT go out, unfailed, with no kernel sign
of the server's end. That is ``unknown``, with both sides in the reason. After a server-sent
error (4031, 1927, 1053) the library keeps its socket and does send COM_QUIT into the closed
connection, so a confirmed wire there agrees with the agent. The client-side cause of the
later close disputed between the layers does not dispute the server's evidence: ``server``.

Fork copies (``count_families``): a forked child's handle on a connection its parent opened
is a life of its own, attributed as above; per server connection only one end is counted —
the first of its handles' ends that ended it (a client close or the server), else a handle
still open, else the last handle's process end (never_closed). The other handles' ends are
``copy_of`` it: listed with their own cause, counted apart (``Connections.fork_copies``).
"""

import dataclasses
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .join import CLIENT_DETECTED, PEER_END_ERRNO, SEND_PEER_GONE, SERVER_GONE_CODES, Collection, Life

#: What each kind of ``server`` evidence means (report text).
SERVER_EVIDENCE = {
    "kernel_socket_dropped": "kernel: the client library had already dropped the socket at mysql_close",
    "kernel_not_sent": "kernel: mysql_close sent no COM_QUIT on a connection that had opened",
    "kernel_send_failed": "kernel: the COM_QUIT send failed (EPIPE/ECONNRESET)",
    "kernel_eof": "kernel: the socket saw the server's EOF/reset before the client's close",
    "kernel_fin_first": "kernel: the server's FIN had arrived before mysql_close began (TCP)",
    "agent_error": "agent: the pool invalidated it with a server-gone error",
}

_AGENT_CAUSES = (ev.GC, ev.REFCOUNT, ev.SHUTDOWN, ev.SERVER)  # server: PyMySQL dropped its socket after an error
_BPF_CAUSES = (ev.EXPLICIT_CLOSE, ev.GC, ev.REFCOUNT, ev.SHUTDOWN)

#: First bytes of a send inside mysql_close that is the COM_QUIT packet itself.
COM_QUIT_HEAD = ev.COM_QUIT_BYTES.hex()


class Context:
    """What the capture as a whole says about the layers (for reasons and wire states)."""

    def __init__(self, agent: bool, bpf: bool, wire: bool, process_ended):
        self.agent = agent            # the agent layer ran (events or header)
        self.bpf = bpf                # the eBPF layer ran
        self.wire = wire              # the send probes were attached: silence means not sent
        self.process_ended = process_ended  # pid -> t of its end, or None when not known to have ended


def _describe(cause: Optional[str], gen: Optional[int]) -> str:
    if cause == ev.GC and gen is not None:
        return "gc (generation %d)" % gen
    return cause or "nothing"


def _is_tls_record(head: str) -> bool:
    # A TLS record header: content type 0x14-0x17, then major version 0x03 (as probes.c checks).
    return len(head) >= 4 and head[:2] in ("14", "15", "16", "17") and head[2:4] == "03"


def wire_state(life: Life, ctx: Context) -> str:
    """confirmed | encrypted | not_sent | unobserved for one ended connection.

    Without the kernel's send probes nothing was observed, whatever else was recorded. With
    them, the kernel's own verdict at mysql_close return wins (it saw every send of the
    bracket); the sends recorded as events decide when that return was lost.
    """
    if life.bpf_end is not None and life.bpf_end.get("k") == ev.BPF_SOCK_CLOSE:
        return life.bpf_ret["wire"]  # the socket probes' own verdict (PyMySQL: only close() writes COM_QUIT)
    if not ctx.wire or life.bpf_end is None:
        return ev.WIRE_UNOBSERVED
    verdict = life.bpf_ret.get("wire") if life.bpf_ret is not None else None
    if verdict in ev.WIRE_STATES and verdict != ev.WIRE_UNOBSERVED:
        return verdict
    if life.wire:
        if any(h.startswith(COM_QUIT_HEAD) for h in life.wire):
            return ev.WIRE_CONFIRMED
        if all(_is_tls_record(h) for h in life.wire):
            return ev.WIRE_ENCRYPTED
        return ev.WIRE_NOT_SENT  # bytes were sent, but none was a COM_QUIT
    return ev.WIRE_NOT_SENT


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
    if b is None or b.get("k") != ev.BPF_SOCK_CLOSE or b_cause not in (ev.EXPLICIT_CLOSE, ev.REFCOUNT):
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
    t_end, end_tid = (b["t"], b["tid"]) if b is not None else (a["t"], a["tid"])

    a_cause = a_gen = None
    if a is not None:
        if a.get("k") == ev.CONN_CLOSE:
            a_cause = ev.EXPLICIT_CLOSE
        else:
            c = a.get("cause")
            a_cause = c if c in _AGENT_CAUSES else ev.UNKNOWN
        if a_cause == ev.GC:
            a_gen = a["gen"]
            if a_gen is None and life.agent_collection is not None:
                a_gen = life.agent_collection.gen
    b_cause = b_gen = None
    if b is not None:
        c = b.get("cause")
        b_cause = c if c in _BPF_CAUSES else ev.UNKNOWN
        if b_cause == ev.GC:
            b_gen = b["gen"]
            if b_gen is None and life.bpf_collection is not None:
                b_gen = life.bpf_collection.gen

    reason = None
    b_cause, b_said = _socket_context(a, a_cause, b, b_cause)
    if a is not None and b is not None:
        if b_said is not None and a_cause != ev.UNKNOWN:
            cause, gen = a_cause, a_gen
            reason = b_said or None
        elif b_cause == ev.UNKNOWN and a_cause != ev.UNKNOWN:
            cause, gen = a_cause, a_gen
            reason = "the agent said %s; the eBPF layer could not attribute it" % _describe(a_cause, a_gen)
        elif a_cause == ev.UNKNOWN and b_cause != ev.UNKNOWN:
            cause, gen = b_cause, b_gen
            reason = "the eBPF layer said %s; the agent could not attribute it" % _describe(b_cause, b_gen)
        elif a_cause == b_cause and (a_gen is None or b_gen is None or a_gen == b_gen):
            cause = a_cause
            gen = a_gen if a_gen is not None else b_gen
            if cause == ev.UNKNOWN:
                reason = "neither the agent nor the eBPF layer could attribute it"
        else:
            cause, gen = ev.UNKNOWN, None
            reason = "the layers disagree: the agent said %s, the eBPF layer said %s" % (
                _describe(a_cause, a_gen), _describe(b_cause, b_gen))
    elif a is not None:
        cause, gen = a_cause, a_gen
        if ctx.bpf:
            reason = "seen by the agent only: the eBPF layer saw no mysql_close for it (lost event?)"
        else:
            reason = "seen by the agent only: the eBPF layer was not attached"
        if cause == ev.UNKNOWN:
            reason = "the agent reported an unknown cause (%r); %s" % (a.get("cause"), reason)
    else:
        cause, gen = b_cause, b_gen
        if ctx.agent:
            reason = "seen by the eBPF layer only: the agent saw no close() or destruction for it"
        else:
            reason = "seen by the eBPF layer only: the agent was not loaded"
        if b_said:
            reason = b_said + "; " + reason
        elif cause == ev.UNKNOWN:
            reason = ("the eBPF layer could not tell close() from a destruction "
                      "(a bracket probe was missing); " + reason)

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
        client = _describe(cause, gen)
        if cause == ev.UNKNOWN:
            client = "not attributed (%s)" % (reason or "no evidence")
        said = [_said(kind, life) for kind in evidence]
        contradiction = (life.server_code in CLIENT_DETECTED and wire == ev.WIRE_CONFIRMED
                         and not any(k.startswith("kernel") for k in evidence))
        if contradiction:
            cause, gen, collection = ev.UNKNOWN, None, None
            reason = ("the layers disagree: the pool saw %s (the client library drops the socket on it) "
                      "but the kernel saw mysql_close send COM_QUIT; the close was %s" % (life.server_error, client))
            evidence = None
        else:
            reason = "the server ended it first: %s; the client's later close was %s" % ("; ".join(said), client)
            if life.server_code in SERVER_SENT_CODES and wire == ev.WIRE_CONFIRMED:
                reason += " and its COM_QUIT went into the closed connection"
            cause, gen, collection = ev.SERVER, None, None

    return Verdict(cause, gen if cause == ev.GC else None, collection, reason, wire, evidence or None, t_end, end_tid)


def apply(life: Life, verdict: Optional[Verdict]) -> None:
    """Record ``verdict`` on ``life`` (and the life on its collection) for the report's readers."""
    if verdict is None:
        return
    life.cause = verdict.cause
    life.generation = verdict.generation
    life.collection = verdict.collection
    life.reason = verdict.reason
    life.wire_state = verdict.wire
    life.server_evidence = verdict.evidence
    life.t_end = verdict.t_end
    life.end_tid = verdict.end_tid
    if verdict.collection is not None:
        verdict.collection.lives.append(life)


@dataclasses.dataclass
class Attribution:
    """Every life's verdict applied, and which ends are counted."""

    failed: int                    # failed connects: their mysql_close sends nothing, not a COM_QUIT
    ended: List[Life]              # counted lives that ended (one per server connection)
    copies: List[Life]             # ended fork-copy handles whose connection's end is counted on another
    counted: List[Life]            # every life counted once (failed connects excluded)
    opened: int                    # counted lives whose open was seen
    opened_before_capture: int     # counted lives that ended but were opened before the capture
    open_at_end: int               # counted lives still open when the capture stopped
    families: Dict[int, List[Life]]  # fork families (count_families)
    shared: List[List[Life]]       # families whose connection more than one handle ended


def attribute_all(lives: Sequence[Life], ctx: Context) -> Attribution:
    """Decide and apply every life's verdict, then which ends count: failed connects are no
    COM_QUIT; of the handles a fork shares on one server connection only the first end counts."""
    failed = 0
    for life in lives:
        if life.failed:
            failed += 1
            continue
        apply(life, decide(life, ctx))
    families = count_families(lives)
    ended: List[Life] = []
    copies: List[Life] = []
    counted: List[Life] = []
    open_at_end = before_capture = opened = 0
    for life in lives:
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
                       shared=shared)


SERVER_SENT_CODES = frozenset(c for c in SERVER_GONE_CODES if c not in CLIENT_DETECTED)


def _opened_ok(life: Life) -> bool:
    """The connect of this handle's server connection is known to have succeeded."""
    root = life.family
    if life.failed or root.failed:
        return False
    if root.bpf_open is not None:
        return root.bpf_open["ok"]
    return root.agent_open is not None and root.agent_open.get("k") == ev.CONN_OPEN


def server_evidence(life: Life, ctx: Context, wire: str) -> List[str]:
    """Which evidence says the server ended ``life`` before the client's close (empty: none)."""
    out = []
    if life.server_error is not None:
        out.append("agent_error")
    b = life.bpf_end
    if b is None or not _opened_ok(life):
        return out
    if b.get("sock") is False:
        out.append("kernel_socket_dropped")
    failed = bool(life.send_errors) and any(r in SEND_PEER_GONE for r in life.send_errors)
    verdict = life.bpf_ret.get("wire") if life.bpf_ret is not None else None
    # Not sent because a send failed for another reason (EAGAIN, ...) is no sign of the server.
    # (Only libmysqlclient always sends COM_QUIT: PyMySQL's destructions never do, docs/pymysql.md.)
    if (ctx.wire and verdict == ev.WIRE_NOT_SENT and wire == ev.WIRE_NOT_SENT and not life.send_errors
            and life.driver == ev.DRIVER_MYSQLCLIENT):
        out.append("kernel_not_sent")
    if failed:
        out.append("kernel_send_failed")
    if life.eof:
        out.append("kernel_eof")
    # The FIN recorded *before* mysql_close, unlike the close_wait state found after it.
    if life.bpf_ret is not None and life.bpf_ret.get("fin_first") is True:
        out.append("kernel_fin_first")
    return out


def _said(kind: str, life: Life) -> str:
    """One piece of server evidence as a clause of the COM_QUIT's reason."""
    if kind == "agent_error":
        return "the pool invalidated it with %s" % life.server_error
    if kind == "kernel_socket_dropped":
        errno = life.bpf_end.get("last_errno") if life.bpf_end is not None else None
        return "the client library had dropped its socket%s" % (" after error %d" % errno if errno else "")
    if kind == "kernel_not_sent":
        return "its mysql_close sent no COM_QUIT"
    if kind == "kernel_send_failed":
        return "its COM_QUIT send failed with %s" % "/".join(
            SEND_PEER_GONE[r] for r in sorted(set(life.send_errors or ())) if r in SEND_PEER_GONE)
    if kind == "kernel_eof":
        pe = life.peer_end
        if pe is not None:
            ret = pe["ret"]
            return "the socket saw the server's %s on a %s first" % (
                PEER_END_ERRNO.get(ret, "end (%s)" % ret), pe.get("op") or "read")
        return "the socket saw the server's EOF/reset first"
    if kind == "kernel_fin_first":
        return "the server's FIN had arrived before its mysql_close began"
    return kind


def _first_end(members: Sequence[Life]) -> Life:
    ends = [lf for lf in members if lf.cause is not None and lf.cause != ev.NEVER_CLOSED and lf.t_end is not None]
    if ends:
        return min(ends, key=lambda lf: lf.t_end)
    still_open = [lf for lf in members if lf.cause is None]
    if still_open:
        return still_open[0]
    return max(members, key=lambda lf: lf.t_end if lf.t_end is not None else -1)


def count_families(lives: Sequence[Life]) -> Dict[int, List[Life]]:
    """Mark every fork copy whose end is not the one counted (``copy_of``); returns the families.

    Runs after ``attribute``. A family is a connection opened once and held by several
    processes through fork; only its first end is counted, because that is the one that
    ended it on the server (a COM_QUIT from any handle closes the server connection for all).
    """
    families: Dict[int, List[Life]] = defaultdict(list)
    for life in lives:
        if life.root is not None:
            families[id(life.root)].append(life)
    out = {}
    for key, copies in families.items():
        members = [copies[0].root] + copies
        counted = _first_end(members)
        for lf in members:
            lf.copy_of = None if lf is counted else counted
            if lf is not counted and lf.collection is not None and lf in lf.collection.lives:
                lf.collection.lives.remove(lf)
        out[key] = members
    return out
