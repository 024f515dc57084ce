"""Connections that ended without COM_QUIT, per driver, and the server's Aborted_clients (issue 19).

A client that closes its socket without COM_QUIT is an *aborted client* to the server: it
adds one to ``Aborted_clients`` and, with ``log_warnings`` >= 2, logs "Aborted connection …
(Got an error reading communication packets)". libmysqlclient's ``mysql_close`` always
sends COM_QUIT, whatever destroyed the connection; PyMySQL sends it only from ``close()``:
its ``__del__`` closes the socket without it (docs/pymysql.md). So a connection ended
without COM_QUIT is one whose kernel wire verdict is ``not_sent``, or — the wire unobserved —
a PyMySQL connection that was not closed by ``close()``, or one never closed at all.
Connections the server ended first are not aborted clients and are left out.
"""

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

from trace_quit.tracer import events as ev

from .model import Finding, NoQuit
from .words.aborted import finding_text


def sent_no_quit(life) -> bool:
    """Did ``life`` end without a COM_QUIT from the client (an aborted client to the server)?"""
    if life.cause is None or life.cause == ev.SERVER:
        return False
    if life.cause == ev.NEVER_CLOSED or life.wire_state == ev.WIRE_NOT_SENT:
        return True
    if life.wire_state == ev.WIRE_CONFIRMED:
        return False
    # The wire unobserved or encrypted: the driver's code decides. libmysqlclient's mysql_close
    # always sends COM_QUIT (mysqlclient, mysql-connector's C extension); the pure-Python and
    # asyncio drivers only from close() / ensure_closed().
    if life.cause in (ev.EXPLICIT_CLOSE, ev.UNKNOWN):
        return False   # never a guess: an unattributed encrypted close is not counted either way
    return life.driver not in ev.QUIT_ON_DESTROY


def server_aborted_clients(server_status: Sequence) -> Optional[int]:
    """The increase of the server's Aborted_clients between the sampler's first and last reading."""
    readings = [e for _, e in server_status if isinstance(e.aborted_clients, int)]
    first = next((e for e in readings if e.at == "start"), None)
    last = next((e for e in reversed(readings) if e.at == "end"), None)
    if first is None or last is None:
        return None
    return last.aborted_clients - first.aborted_clients


def summarise(ended: Sequence, j) -> NoQuit:
    """The NoQuit section of the report from the counted, ended lives and the join."""
    without = [lf for lf in ended if sent_no_quit(lf)]
    by_driver: Dict[str, Dict[str, int]] = {}
    for lf in ended:
        by_driver.setdefault(lf.driver, Counter())[lf.cause] += 1
    return NoQuit(
        without_quit=len(without),
        by_cause=dict(Counter(lf.cause for lf in without)),
        by_driver={d: dict(c) for d, c in sorted(by_driver.items())},
        without_quit_by_driver=dict(Counter(lf.driver for lf in without)),
        server_aborted_clients=server_aborted_clients(j.server_status),
        unprobed_drivers=sorted(set(j.unprobed.values())),
        outside_library=sum(1 for lf in ended if lf.driver == ev.DRIVER_SOCKET))


def finding(nq: NoQuit) -> Optional[Finding]:
    """A warning when connections ended without COM_QUIT for a client-side reason."""
    n = nq.without_quit - nq.by_cause.get(ev.NEVER_CLOSED, 0)  # never_closed has its own finding
    if n <= 0:
        return None
    title, evidence, fix = finding_text(nq, n)
    return Finding("warning", title, evidence, fix, None, n)


#: Keys of connections only the kernel saw on a socket outside the client library.
KERNEL_ONLY_BASE = 1 << 62


def pair_sockets(events: List[Any]) -> None:
    """Give the kernel's bpf_sock_connect/close records (keyed by pid + fd) a ``conn``: each is
    replaced in ``events`` by its copy with it (tracer/records.py: ANALYSIS_FIELDS).

    ``events`` is time-sorted. The agent's PyMySQL conn_open for the same pid and fd, between
    the kernel's greeting and its close, gives its ``conn`` (the socket inode), so both layers
    speak of one connection; without it the socket gets a key of its own (KERNEL_ONLY_BASE + n).
    """
    pending: Dict[tuple, list] = {}   # (pid, fd) -> [index of bpf_sock_connect, conn]
    fresh = [KERNEL_ONLY_BASE]

    def key_for(slot):
        if slot[1] is None:
            fresh[0] += 1
            slot[1] = fresh[0]
        return slot[1]

    for i, e in enumerate(events):
        k = e.k
        if k == ev.BPF_SOCK_CONNECT and not e.lib and e.conn is None:
            pending[(e.pid, e.fd)] = [i, None]
        elif k == ev.CONN_OPEN and e.driver in ev.SOCKET_DRIVERS:
            slot = pending.get((e.pid, e.fd))
            if slot is not None and slot[1] is None:
                slot[1] = e.conn
        elif k == ev.BPF_SOCK_CLOSE and not e.lib and e.conn is None:
            slot = pending.pop((e.pid, e.fd), None)
            if slot is None:
                slot = [None, None]   # connected before the capture
            conn = key_for(slot)
            if slot[0] is not None:
                events[slot[0]] = events[slot[0]]._replace(conn=conn)
            events[i] = e._replace(conn=conn)
    for slot in pending.values():   # still open at the end
        events[slot[0]] = events[slot[0]]._replace(conn=key_for(slot))
