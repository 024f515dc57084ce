"""engine-per-call-pymysql: engine-per-call over PyMySQL (``mysql+pymysql://``).

The incident's code (workloads/engine_per_call.py) with the pure-Python driver: the same
leak and saw-tooth, but each connection the garbage collector frees ends *without* COM_QUIT
(PyMySQL's ``__del__`` only closes the socket), so on the server every one of them is an
aborted client ("Aborted connection ... Got an error reading communication packets").

    python -m trace_quit.workloads engine-per-call-pymysql [--dsn DSN] [--sample-csv counts.csv]
"""

import sys

from trace_quit.workloads import engine_per_call, harness


def configure(url, args):
    """engine_per_call's configure, with the PyMySQL dialect."""
    engine_per_call.configure(url.replace("mysql+mysqldb://", "mysql+pymysql://", 1), args)


def get_db_session():
    return engine_per_call.get_db_session()


def main(argv=None):
    return harness.main("engine-per-call-pymysql", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
