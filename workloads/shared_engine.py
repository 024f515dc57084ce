"""shared-engine: the fix. One module-level Engine, reused.

``create_engine(url, pool_recycle=10)`` runs once; ``get_db_session()`` only makes a new
Session on the shared Engine. Sessions are still never closed: each ``commit()`` returns the
connection to the one QueuePool, which keeps at most ``pool_size`` idle connections and
lets ``max_overflow`` more exist while checked out.

Expected: the server's connection count for the app user never exceeds
``pool_size + max_overflow`` (5 + 10 = 15 by default) although 20 workers want a
connection at once (the extra ones wait for a checkin); overflow connections are closed
by the pool with ``close()`` when returned to a full pool.

    python -m trace_quit.workloads shared-engine [--dsn DSN] [--pool-size 5 --max-overflow 10]
"""

import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from trace_quit.workloads import harness

engine = None
Session = None


def configure(url, args):
    global engine, Session
    engine = create_engine(url, **harness.pool_options(args))  # once, at start-up
    Session = sessionmaker(bind=engine)


def get_db_session():
    return Session()


def main(argv=None):
    return harness.main("shared-engine", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
