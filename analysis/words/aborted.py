"""Connections that ended without COM_QUIT in words: the summary's sentences about aborted
clients and drivers, the warning's text, and what a drop whose ends sent no COM_QUIT adds.
analysis/aborted.py counts them (NoQuit); the sentences are built here.
"""

from typing import List, Optional, Tuple

from trace_quit.tracer import events as ev

from ..model import NoQuit
from .causes import CAUSES


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


def _closed_without_quit(nq: NoQuit) -> Optional[str]:
    """"N connections were closed without COM_QUIT (driver): N by cause, ..." (None: none were)."""
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


def finding_text(nq: NoQuit, n: int) -> Tuple[str, str, str]:
    """The title, evidence and fix of aborted.finding's warning: ``n`` connections closed without
    COM_QUIT for a client-side reason."""
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
    return ("%d %s closed without COM_QUIT: the server counts each as an aborted client" % (
        n, "connection was" if n == 1 else "connections were"), evidence, fix)


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
    silent.discard(ev.NEVER_CLOSED)   # its explanation already says so (explain_group, words/drops.py)
    for d in drops:
        if d.cause in silent:
            d.explanation += ", none of them with a COM_QUIT: the server counts each as an aborted client"
