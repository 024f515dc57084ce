"""Attribution: the one place where a connection's end gets its cause, generation and wire state.

Evidence comes from two independent layers (DESIGN.md, causes table):

- the agent: ``conn_close`` (an explicit ``close()``) or ``conn_destroy`` with the cause it
  saw in Python (gc + generation + collection id, refcount, shutdown);
- the kernel: ``bpf_close`` at ``mysql_close`` entry with the cause from the per-thread
  brackets of ``_mysql_ConnectionObject_close`` / ``_dealloc``, the GC probes and
  ``Py_FinalizeEx``; and the bytes sent inside ``mysql_close`` (``bpf_wire``).

Either layer alone is enough; when both speak and disagree the cause is ``unknown`` with a
reason naming what each said — never a guess. A kernel ``unknown`` (a bracket probe missing)
is missing evidence, not disagreement: the agent's cause stands and the reason says so.
"""

from typing import Optional

from trace_quit.tracer import events as ev

from .join import Collection, Life, as_int

_AGENT_CAUSES = (ev.GC, ev.REFCOUNT, ev.SHUTDOWN)
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


def attribute(life: Life, ctx: Context) -> None:
    """Decide ``life.cause``/``generation``/``collection``/``reason``/``wire_state``/``t_end``."""
    a = life.agent_end
    b = life.bpf_end
    if a is None and b is None:
        end = ctx.process_ended(life.pid)
        if end is not None:
            life.cause = ev.NEVER_CLOSED
            life.t_end = end
            life.reason = "the process ended with the connection open: no COM_QUIT was sent"
        # else: still open when the capture stopped (truncated): no cause yet.
        return

    # The moment of the COM_QUIT: mysql_close entry when the kernel saw it, else the agent's hook.
    if b is not None:
        life.t_end = b["t"]
        life.end_tid = as_int(b.get("tid"))
    else:
        life.t_end = a["t"]
        life.end_tid = as_int(a.get("tid"))

    a_cause = a_gen = None
    if a is not None:
        if a.get("k") == ev.CONN_CLOSE:
            a_cause = ev.EXPLICIT_CLOSE
        else:
            c = a.get("cause")
            a_cause = c if c in _AGENT_CAUSES else ev.UNKNOWN
        if a_cause == ev.GC:
            a_gen = as_int(a.get("gen"))
            if a_gen is None and life.agent_collection is not None:
                a_gen = life.agent_collection.gen
    b_cause = b_gen = None
    if b is not None:
        c = b.get("cause")
        b_cause = c if c in _BPF_CAUSES else ev.UNKNOWN
        if b_cause == ev.GC:
            b_gen = as_int(b.get("gen"))
            if b_gen is None and life.bpf_collection is not None:
                b_gen = life.bpf_collection.gen

    reason = None
    if a is not None and b is not None:
        if b_cause == ev.UNKNOWN and a_cause != ev.UNKNOWN:
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
        if cause == ev.UNKNOWN:
            reason = ("the eBPF layer could not tell close() from a destruction "
                      "(a bracket probe was missing); " + reason)

    collection: Optional[Collection] = None
    if cause == ev.GC:
        collection = life.agent_collection or life.bpf_collection
        if collection is not None and collection.src == ev.SRC_BPF and collection.twin is not None:
            collection = collection.twin  # report the agent's view: it has the id, thread and site
        if gen is None and collection is not None:
            gen = collection.gen

    if life.server_error is not None:
        # The server had already ended it (the pool saw the error): the client's close found
        # the socket gone and the library skipped COM_QUIT.
        reason = "the server ended it first (%s); the client's later close was %s" % (
            life.server_error, _describe(cause, gen))
        cause, gen, collection = ev.SERVER, None, None

    life.cause = cause
    life.generation = gen if cause == ev.GC else None
    life.collection = collection
    life.reason = reason
    life.wire_state = wire_state(life, ctx)
    if collection is not None:
        collection.lives.append(life)
