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

#: How the report names each driver.
DRIVER_NAMES = {
    ev.DRIVER_MYSQLCLIENT: "mysqlclient",
    ev.DRIVER_PYMYSQL: "PyMySQL",
    ev.DRIVER_CONNECTOR: "mysql-connector (pure Python)",
    ev.DRIVER_CONNECTOR_C: "mysql-connector (C extension)",
    ev.DRIVER_AIOMYSQL: "aiomysql",
    ev.DRIVER_ASYNCMY: "asyncmy",
    ev.DRIVER_SOCKET: "kernel only: a socket outside the client library",
}


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


def _closed_without_quit(nq: NoQuit) -> Optional[str]:
    """"N connections were closed without COM_QUIT (driver): N by cause, ..." (None: none were)."""
    from .words.causes import CAUSES  # the causes' words (words.summary reads this module's sentences)

    closed = nq.without_quit - nq.by_cause.get(ev.NEVER_CLOSED, 0)  # never_closed has its own sentence
    if not closed:
        return None
    causes = ", ".join("%d %s" % (n, CAUSES[c].words_without_quit if c in CAUSES else c)
                       for c, n in sorted(nq.by_cause.items(), key=lambda kv: -kv[1]) if c != ev.NEVER_CLOSED)
    drivers = ""
    if len(nq.without_quit_by_driver) == 1:
        only = next(iter(nq.without_quit_by_driver))
        drivers = " (%s)" % DRIVER_NAMES.get(only, only)
    return "%d %s closed without COM_QUIT%s: %s" % (
        closed, "connection was" if closed == 1 else "connections were", drivers, causes)


def summary_lines(nq: NoQuit) -> List[str]:
    """The report's sentences about aborted clients, drivers and what it cannot see."""
    out = []
    never = nq.by_cause.get(ev.NEVER_CLOSED, 0)
    closed = _closed_without_quit(nq)
    if closed:
        out.append("%s. The server counts each as an aborted client "
                   "(Aborted_clients; 'Aborted connection' in its error log)." % closed)
    if nq.server_aborted_clients is not None and (nq.without_quit or nq.server_aborted_clients):
        out.append("The server's Aborted_clients rose by %d during the run (trace-quit counted %d "
                   "connections that ended without COM_QUIT%s)." % (
                       nq.server_aborted_clients, nq.without_quit,
                       ", %d of them never closed" % never if never else ""))
    if len(nq.by_driver) > 1:
        parts = []
        for driver, causes in nq.by_driver.items():
            total = sum(causes.values())
            detail = ", ".join("%s %d" % (c, n) for c, n in sorted(causes.items(), key=lambda kv: -kv[1]))
            parts.append("%s %d (%s)" % (DRIVER_NAMES.get(driver, driver), total, detail))
        out.append("By driver: %s." % "; ".join(parts))
    if nq.outside_library:
        out.append("%d MySQL %s opened outside the probed client library (PyMySQL or a statically linked "
                   "client): seen by the kernel only." % (
                       nq.outside_library, "connection was" if nq.outside_library == 1 else "connections were"))
    if nq.unprobed_drivers:
        out.append("The program imported %s: trace-quit does not probe %s, so %s connections are "
                   "missing from these counts unless the kernel saw their sockets." % (
                       ", ".join(nq.unprobed_drivers), "it" if len(nq.unprobed_drivers) == 1 else "them",
                       "its" if len(nq.unprobed_drivers) == 1 else "their"))
    return out


def finding(nq: NoQuit) -> Optional[Finding]:
    """A warning when connections ended without COM_QUIT for a client-side reason."""
    n = nq.without_quit - nq.by_cause.get(ev.NEVER_CLOSED, 0)  # never_closed has its own finding
    if n <= 0:
        return None
    evidence = "%s." % _closed_without_quit(nq)
    drivers = [d for d in DRIVER_ADVICE if nq.without_quit_by_driver.get(d)]
    for d in drivers:
        evidence += " " + DRIVER_ADVICE[d][0]
    if nq.server_aborted_clients is not None:
        evidence += " The server's Aborted_clients rose by %d during the run." % nq.server_aborted_clients
    if drivers and all(d in ASYNC_DRIVERS for d in drivers):
        fix = ("Close connections with `await conn.ensure_closed()` (SQLAlchemy: `async with` sessions and "
               "connections), use one shared AsyncEngine, and `await engine.dispose()` for AsyncEngines you "
               "create; do not leave %s connections to the garbage collector." % _names(drivers))
    else:
        fix = ("Close connections with close() (or a with-block), return them to one shared Engine's pool, "
               "and dispose Engines you create; do not leave %s connections to the garbage collector." % (
                   _names(drivers) if drivers else "them"))
    return Finding("warning", "%d %s closed without COM_QUIT: the server counts each as an aborted client" % (
        n, "connection was" if n == 1 else "connections were"), evidence, fix, None, n)


#: Per driver that can close without COM_QUIT: what it does (evidence), in the order said.
DRIVER_ADVICE = {
    ev.DRIVER_PYMYSQL: ("PyMySQL sends COM_QUIT only from close(): a connection it destroys (its __del__) "
                        "closes the socket without it.",),
    ev.DRIVER_SOCKET: ("The kernel saw these sockets close without a COM_QUIT (a client the agent does not "
                       "hook, or the agent was not loaded).",),
    ev.DRIVER_CONNECTOR: ("mysql-connector's pure-Python mode sends COM_QUIT only from close(): a connection "
                          "destroyed open closes its socket without it.",),
    ev.DRIVER_AIOMYSQL: ("aiomysql sends COM_QUIT only from ensure_closed(): its __del__ and close() close the "
                         "transport without it (the socket closes on the event loop's next step).",),
    ev.DRIVER_ASYNCMY: ("asyncmy sends COM_QUIT only from ensure_closed(): a connection dropped open keeps its "
                        "transport until that is destroyed or the process ends.",),
}
ASYNC_DRIVERS = (ev.DRIVER_AIOMYSQL, ev.DRIVER_ASYNCMY)


def _names(drivers) -> str:
    names = [DRIVER_NAMES.get(d, d).split(" (")[0] for d in drivers if d != ev.DRIVER_SOCKET]
    return " or ".join(dict.fromkeys(names)) or "such"


def explain_drops(drops, nq: NoQuit, com_quit) -> None:
    """Append to each drop whose cause never sent COM_QUIT in this capture that the server saw aborted clients."""
    silent = {c for c, n in nq.by_cause.items() if n and n == com_quit.by_cause.get(c)}
    silent.discard(ev.NEVER_CLOSED)   # its explanation already says so (drops.explain_group)
    for d in drops:
        if d.cause in silent:
            d.explanation += ", none of them with a COM_QUIT: the server counts each as an aborted client"


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
