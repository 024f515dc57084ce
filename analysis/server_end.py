"""The server ended it first: the evidence for the ``server`` cause, read from one connection life.

analysis/attribute.py decides (its row 3: server evidence overrides the client-side cause of the
later close, unless it contradicts the wire); this module says which evidence a life carries
(``server_evidence``), what each kind means (``SERVER_EVIDENCE``) and the reason's clauses.

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
"""

from typing import List, Optional

from trace_quit.tracer import events as ev

from .evidence import CLIENT_DETECTED, PEER_END_ERRNO, SEND_PEER_GONE, SERVER_GONE_CODES, Life

#: What each kind of ``server`` evidence means (report text).
SERVER_EVIDENCE = {
    "kernel_socket_dropped": "kernel: the client library had already dropped the socket at mysql_close",
    "kernel_not_sent": "kernel: mysql_close sent no COM_QUIT on a connection that had opened",
    "kernel_send_failed": "kernel: the COM_QUIT send failed (EPIPE/ECONNRESET)",
    "kernel_eof": "kernel: the socket saw the server's EOF/reset before the client's close",
    "kernel_fin_first": "kernel: the server's FIN had arrived before mysql_close began (TCP)",
    "agent_error": "agent: the pool invalidated it with a server-gone error",
}

SERVER_SENT_CODES = frozenset(c for c in SERVER_GONE_CODES if c not in CLIENT_DETECTED)


def describe(cause: Optional[str], gen: Optional[int]) -> str:
    """How a reason names a cause: "gc (generation 2)"."""
    if cause == ev.GC and gen is not None:
        return "gc (generation %d)" % gen
    return cause or "nothing"


def server_ended(life: Life, evidence, wire, cause, gen, collection, reason):
    """Row 3: the server's evidence overrides the client-side cause, unless it contradicts the wire."""
    client = describe(cause, gen)
    if cause == ev.UNKNOWN:
        client = "not attributed (%s)" % (reason or "no evidence")
    said = [_said(kind, life) for kind in evidence]
    contradiction = (life.server_code in CLIENT_DETECTED and wire == ev.WIRE_CONFIRMED
                     and not any(k.startswith("kernel") for k in evidence))
    if contradiction:
        reason = ("the layers disagree: the pool saw %s (the client library drops the socket on it) "
                  "but the kernel saw mysql_close send COM_QUIT; the close was %s" % (life.server_error, client))
        return ev.UNKNOWN, None, None, reason, None
    reason = "the server ended it first: %s; the client's later close was %s" % ("; ".join(said), client)
    if life.server_code in SERVER_SENT_CODES and wire == ev.WIRE_CONFIRMED:
        reason += " and its COM_QUIT went into the closed connection"
    return ev.SERVER, None, None, reason, evidence


def _opened_ok(life: Life) -> bool:
    """The connect of this handle's server connection is known to have succeeded."""
    root = life.family
    if life.failed or root.failed:
        return False
    if root.bpf_open is not None:
        # a socket's connect record means the kernel saw the server's greeting: it succeeded
        return root.bpf_open.k == ev.BPF_SOCK_CONNECT or root.bpf_open.ok
    return root.agent_open is not None and root.agent_open.k == ev.CONN_OPEN


def server_evidence(life: Life, ctx, wire: str) -> List[str]:
    """Which evidence says the server ended ``life`` before the client's close (empty: none)."""
    out = []
    if life.server_error is not None:
        out.append("agent_error")
    b = life.bpf_end
    if b is None or not _opened_ok(life):
        return out
    if b.k == ev.BPF_CLOSE and b.sock is False:
        out.append("kernel_socket_dropped")
    failed = bool(life.send_errors) and any(r in SEND_PEER_GONE for r in life.send_errors)
    verdict = life.bpf_ret.wire if life.bpf_ret is not None else None
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
    if life.bpf_ret is not None and life.bpf_ret.fin_first is True:
        out.append("kernel_fin_first")
    return out


def _said(kind: str, life: Life) -> str:
    """One piece of server evidence as a clause of the COM_QUIT's reason."""
    if kind == "agent_error":
        return "the pool invalidated it with %s" % life.server_error
    if kind == "kernel_socket_dropped":
        b = life.bpf_end
        errno = b.last_errno if b is not None and b.k == ev.BPF_CLOSE else None
        return "the client library had dropped its socket%s" % (" after error %d" % errno if errno else "")
    if kind == "kernel_not_sent":
        return "its mysql_close sent no COM_QUIT"
    if kind == "kernel_send_failed":
        return "its COM_QUIT send failed with %s" % "/".join(
            SEND_PEER_GONE[r] for r in sorted(set(life.send_errors or ())) if r in SEND_PEER_GONE)
    if kind == "kernel_eof":
        pe = life.peer_end
        if pe is not None:
            ret = pe.ret
            return "the socket saw the server's %s on a %s first" % (
                PEER_END_ERRNO.get(ret, "end (%s)" % ret), pe.op or "read")
        return "the socket saw the server's EOF/reset first"
    if kind == "kernel_fin_first":
        return "the server's FIN had arrived before its mysql_close began"
    return kind
