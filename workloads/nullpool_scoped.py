"""nullpool-scoped: the other fix. An Engine per call, with NullPool.

``get_db_session()`` still calls ``create_engine()`` on every call, but with
``poolclass=NullPool``, and returns ``scoped_session(sessionmaker(bind=engine))()``.
NullPool keeps no connection: each ``commit()`` checks the connection in, and checking in
closes it with ``close()`` at once. The Engines still leak into the garbage collector's
care, but they no longer hold an open connection when they do.

Expected: the server's connection count for the app user stays within the worker count
(20 by default) -- one connection per callback in flight -- and moves about more than with a
shared engine because every callback connects and disconnects. Every COM_QUIT comes from
``close()``. ``--pool-size``/``--max-overflow``/``--pool-recycle`` do not apply.

    python -m trace_quit.workloads nullpool-scoped [--dsn DSN]
"""

import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker
from sqlalchemy.pool import NullPool

from trace_quit.workloads import harness

URL = None


def check_arguments(parser, args):
    for opt in ("pool_size", "max_overflow", "pool_recycle"):
        if getattr(args, opt) is not None:
            parser.error("--%s does not apply to NullPool" % opt.replace("_", "-"))


def configure(url, args):
    global URL
    URL = url


def get_db_session():
    engine = create_engine(URL, poolclass=NullPool)  # a new Engine on every call, but no pool
    return scoped_session(sessionmaker(bind=engine))()


def main(argv=None):
    return harness.main("nullpool-scoped", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
