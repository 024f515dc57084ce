"""known-causes-drivers: known causes for mysql-connector (C and pure), aiomysql and asyncmy.

One driver per run (``--driver``), with defaults of 2 close, 2 refcount, 2 gc, 1 shutdown:

    close      close() (mysql-connector) / ensure_closed() (aiomysql, asyncmy): COM_QUIT
    refcount   ``del`` of the last reference
    gc         in reference cycles, freed by gc.collect() (generation 2)
    shutdown   still open in a module global when the interpreter finalises

What the server sees differs by driver (docs/drivers.md): mysql-connector's C extension sends
COM_QUIT from its destructor too; the pure driver and aiomysql close the socket without it
(aborted clients); asyncmy has no destructor: a connection dropped open keeps its transport
registered with the event loop, and its socket ends only when that transport is destroyed:
here by a gc.collect() after asyncio.run() closed the loop (the refcount and gc rows), or by
nothing before the process ends (the shutdown row: never closed). Automatic collection is
disabled (gc.collect() still works).

    python -m trace_quit.workloads known-causes-drivers --driver connector-c --dsn mysql://u:p@h:3306/db
"""

import argparse
import gc
import sys

from trace_quit.workloads import dsn as dsnlib

DRIVERS = ("connector-c", "connector-pure", "aiomysql", "asyncmy")
LEFT_OPEN = []


class Holder:
    """Keeps a connection inside a reference cycle, so only the cyclic GC can free it."""

    def __init__(self, conn):
        self.conn = conn
        self.me = self


def expected(driver, close=2, refcount=2, gc_=2, shutdown=1):
    """cause -> count this workload produces with ``driver`` (the tests' truth)."""
    if driver == "asyncmy":
        return {"explicit_close": close, "gc": refcount + gc_, "never_closed": shutdown}
    return {"explicit_close": close, "refcount": refcount, "gc": gc_, "shutdown": shutdown}


def quits(driver, close=2, refcount=2, gc_=2, shutdown=1):
    """How many of them send COM_QUIT (the rest are aborted clients to the server)."""
    return close + (refcount + gc_ + shutdown if driver == "connector-c" else 0)


def _sync(args, kwargs):
    import mysql.connector

    def connect():
        conn = mysql.connector.connect(use_pure=args.driver == "connector-pure", **kwargs)
        want = "CMySQLConnection" if args.driver == "connector-c" else "MySQLConnection"
        if type(conn).__name__ != want:
            raise SystemExit("known-causes-drivers: got %s, not %s" % (type(conn).__name__, want))
        return conn

    for conn in [connect() for _ in range(args.close)]:
        conn.close()
    for _ in range(args.refcount):
        conn = connect()
        del conn
    for _ in range(args.gc):
        Holder(connect())
    gc.collect()
    LEFT_OPEN.extend(connect() for _ in range(args.shutdown))


async def _async(args, kwargs):
    if args.driver == "aiomysql":
        import aiomysql
        kwargs = dict(kwargs, db=kwargs.pop("database", None))
        connect = aiomysql.connect
    else:
        import asyncmy
        connect = asyncmy.connect
    import asyncio

    for conn in [await connect(**kwargs) for _ in range(args.close)]:
        await conn.ensure_closed()
    for _ in range(args.refcount):
        conn = await connect(**kwargs)
        del conn
        await asyncio.sleep(0.01)   # aiomysql: its transport closes on a later loop step
    for _ in range(args.gc):
        Holder(await connect(**kwargs))
    gc.collect()
    await asyncio.sleep(0.01)
    LEFT_OPEN.extend([await connect(**kwargs) for _ in range(args.shutdown)])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="known-causes-drivers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--driver", choices=DRIVERS, required=True)
    parser.add_argument("--close", type=int, default=2)
    parser.add_argument("--refcount", type=int, default=2)
    parser.add_argument("--gc", type=int, default=2)
    parser.add_argument("--shutdown", type=int, default=1)
    args = parser.parse_args(argv)
    if args.driver == "connector-c":
        # Before anything loads the system's libssl (the DSN parser's SQLAlchemy does): the
        # wheel's C extension needs its own newer one, and fails to load after it (Debian 12).
        import _mysql_connector  # noqa: F401
    kwargs = dsnlib.parse(args.dsn)
    gc.disable()
    gc.collect()
    if args.driver.startswith("connector"):
        _sync(args, kwargs)
    else:
        import asyncio
        import warnings

        warnings.simplefilter("ignore", ResourceWarning)   # aiomysql warns of what we do on purpose
        asyncio.run(_async(args, kwargs))
        if args.driver == "asyncmy":
            # The loop is closed: the dropped connections' transports are unreachable cycles
            # now, and this collection destroys them (and closes their sockets).
            gc.collect()
    sys.stdout.write("known-causes-drivers: done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
