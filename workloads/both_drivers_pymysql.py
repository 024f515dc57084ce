"""both-drivers-pymysql: one program, two drivers: mysqlclient and PyMySQL side by side.

Per driver, by construction (defaults): mysqlclient 2 close(), 3 refcount, 5 gc generation 0;
PyMySQL 7 close(), 11 refcount, 13 gc generation 0. Each connection is opened and ended by
its own row, one driver's rows interleaved with the other's, so a tracer that confuses the
drivers' keys miscounts. Only the mysqlclient destructions and the 9 close() send COM_QUIT.

    python -m trace_quit.workloads both-drivers-pymysql --dsn mysql://u:p@127.0.0.1:3306/db
"""

import argparse
import gc
import sys

from trace_quit.workloads import dsn as dsnlib


class Holder:
    """Keeps a connection inside a reference cycle, so only the cyclic GC can free it."""

    def __init__(self, conn):
        self.conn = conn
        self.me = self


def main(argv=None):
    parser = argparse.ArgumentParser(prog="both-drivers-pymysql", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    for driver, close, refcount, gc0 in (("mysqlclient", 2, 3, 5), ("pymysql", 7, 11, 13)):
        parser.add_argument("--%s-close" % driver, type=int, default=close)
        parser.add_argument("--%s-refcount" % driver, type=int, default=refcount)
        parser.add_argument("--%s-gc" % driver, type=int, default=gc0)
    args = parser.parse_args(argv)

    import MySQLdb
    import pymysql

    kwargs = dsnlib.parse(args.dsn)
    drivers = (("mysqlclient", MySQLdb), ("pymysql", pymysql))
    gc.disable()
    gc.collect()
    for name, module in drivers:
        conns = [module.connect(**kwargs) for _ in range(getattr(args, name + "_close"))]
        for conn in conns:
            conn.close()
    for name, module in drivers:
        for _ in range(getattr(args, name + "_refcount")):
            conn = module.connect(**kwargs)
            del conn
    for name, module in drivers:
        for _ in range(getattr(args, name + "_gc")):
            Holder(module.connect(**kwargs))
    gc.collect(0)
    sys.stdout.write("both-drivers-pymysql: done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
