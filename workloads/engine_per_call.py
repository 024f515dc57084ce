"""engine-per-call: the incident's code. A new Engine on every call.

``get_db_session()`` calls ``create_engine(url, pool_recycle=10)`` each time, so every
callback gets a new Engine with its own QueuePool and opens one new connection; the session
is committed but never closed, the engine never disposed. Each Engine sits in a reference
cycle (SQLAlchemy's statement cache calls back into it), so dropping the last reference
frees nothing: only the cyclic garbage collector destroys an Engine, its pool and the
still-open MySQLdb connection in it, whose C destructor then sends COM_QUIT.

The collector runs with the study's thresholds, ``gc.set_threshold(700, 10, 10)`` (what
CPython 3.8-3.12 use, and the 3.10 the study ran on), on every Python: 3.13 raised generation
0's threshold to 2000, and with it the 500 tasks never reach a generation-2 collection (the
largest drop is then a generation-1 one). ``--gc-threshold python`` keeps the interpreter's own;
the summary line says which were in effect.

Expected (20 workers, 500 tasks, defaults): the server's connection count for the app user
climbs far past 15 (one pool's limit) in a saw-tooth -- generation-1 collections every few
seconds each free a few dozen connections -- and falls sharply once, late in the run, when
the first full (generation-2) collection frees the Engines that had aged into generation 2.
No connection is closed by ``close()``. Whatever is left is destroyed at interpreter exit;
after the program ends, every connection it opened is gone.

    python -m trace_quit.workloads engine-per-call [--dsn DSN] [--sample-csv counts.csv]
        [--gc-threshold 700 10 10 | --gc-threshold python]
"""

import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from trace_quit.workloads import harness

#: The study's collector thresholds (CPython 3.10's defaults), set before the run.
GC_THRESHOLD = (700, 10, 10)

URL = None
POOL_RECYCLE = harness.POOL_RECYCLE
POOL_OPTIONS = {}


def configure(url, args):
    global URL, POOL_RECYCLE, POOL_OPTIONS
    URL = url
    POOL_OPTIONS = harness.pool_options(args)
    POOL_RECYCLE = POOL_OPTIONS.pop("pool_recycle")


def get_db_session():
    engine = create_engine(URL, pool_recycle=POOL_RECYCLE, **POOL_OPTIONS)  # a new Engine and QueuePool on every call
    return sessionmaker(bind=engine)()


def main(argv=None):
    return harness.main("engine-per-call", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
