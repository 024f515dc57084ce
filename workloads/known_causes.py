"""known-causes: close MySQL connections by known causes in prime counts.

The exact-count fixture of every layer (agent, eBPF, analysis). With the defaults it sends
44 COM_QUITs:

    7   explicit_close   close() called from a worker thread
    11  refcount         ``del`` of the last reference
    5   gc, generation 0 in reference cycles, freed by gc.collect(0)
    13  gc, generation 2 in reference cycles promoted to generation 2, freed by gc.collect(2)
    2   refcount         the last reference dropped inside an atexit handler
    3   gc, generation 2 in reference cycles freed by gc.collect() inside an atexit handler
    3   shutdown         still open in a module global when the interpreter finalises

so 7 explicit_close, 13 refcount, 21 gc (5 of generation 0, 16 of generation 2), 3 shutdown.
An atexit handler is still the program's own code: what it drops is refcount or gc, and
``shutdown`` begins only after the last atexit handler has run (the interpreter finalising).

Automatic collection is disabled so that only the explicit collections above run
(gc.collect() still works with gc.disable()). Stdlib + mysqlclient (PyMySQL with --driver pymysql).

    python -m trace_quit.workloads known-causes --dsn mysql://u:p@127.0.0.1:3306/db
"""

import argparse
import atexit
import gc
import sys
import threading

from trace_quit.workloads import dsn as dsnlib

#: Connections left open for the interpreter's finalisation to destroy (cause: shutdown).
LEFT_OPEN = []
#: Connections an atexit handler drops (cause: refcount) ...
AT_EXIT_DROP = []
#: ... and Holders (cycles) it frees with gc.collect() (cause: gc, generation 2).
AT_EXIT_CYCLES = []


class Holder:
    """Keeps a connection inside a reference cycle, so only the cyclic GC can free it."""

    def __init__(self, conn):
        self.conn = conn
        self.me = self


def main(argv=None):
    parser = argparse.ArgumentParser(prog="known-causes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--close", type=int, default=7)
    parser.add_argument("--refcount", type=int, default=11)
    parser.add_argument("--gen0", type=int, default=5)
    parser.add_argument("--gen2", type=int, default=13)
    parser.add_argument("--atexit-refcount", type=int, default=2)
    parser.add_argument("--atexit-gc", type=int, default=3)
    parser.add_argument("--shutdown", type=int, default=3)
    parser.add_argument("--driver", choices=("mysqlclient", "pymysql"), default="mysqlclient",
                        help="the client library (pymysql: known-causes-pymysql)")
    args = parser.parse_args(argv)

    if args.driver == "pymysql":
        import pymysql as driver
    else:
        import MySQLdb as driver

    kwargs = dsnlib.parse(args.dsn)

    def connect():
        return driver.connect(**kwargs)

    gc.disable()
    gc.collect()  # start from empty young generations

    # explicit_close: closed by close() on a worker thread.
    to_close = [connect() for _ in range(args.close)]

    def closer():
        for conn in to_close:
            conn.close()

    worker = threading.Thread(target=closer, name="closer")
    worker.start()
    worker.join()
    del to_close[:]

    # refcount: the last reference goes away outside any collection.
    for _ in range(args.refcount):
        conn = connect()
        del conn

    # gc, generation 2: promoted by two collections while referenced, then dropped.
    old = [Holder(connect()) for _ in range(args.gen2)]
    gc.collect(1)  # survivors of generations 0 and 1 move to generation 2
    del old
    gc.collect(0)  # must free none of them: they are no longer young
    gc.collect(1)

    # gc, generation 0: young cycles.
    for _ in range(args.gen0):
        Holder(connect())
    gc.collect(0)

    gc.collect(2)  # the 13 old ones

    # refcount and gc inside an atexit handler: the program's own code still runs there.
    AT_EXIT_DROP.extend(connect() for _ in range(args.atexit_refcount))
    AT_EXIT_CYCLES.extend(Holder(connect()) for _ in range(args.atexit_gc))
    atexit.register(_at_exit)

    # shutdown: destroyed when the interpreter clears this module at exit.
    LEFT_OPEN.extend(connect() for _ in range(args.shutdown))
    sys.stdout.write("known-causes: done\n")
    return 0


def _at_exit():
    """Drop the atexit rows: refcount first, then one full collection for the cycles."""
    del AT_EXIT_DROP[:]
    del AT_EXIT_CYCLES[:]
    gc.collect()


if __name__ == "__main__":
    sys.exit(main())
