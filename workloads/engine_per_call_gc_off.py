"""engine-per-call-gc-off: engine-per-call with ``gc.disable()`` in main: nothing ever frees them.

The same ``get_db_session()`` as engine-per-call (a new Engine on every call, imported
from that module, so reports cite the same ``create_engine`` line), with the cyclic
garbage collector disabled before the run. Reference counting alone cannot free an Engine
(it is in a reference cycle), so no Engine, pool or connection is ever destroyed while
the program runs.

Expected: the server's connection count for the app user only climbs -- one connection per
task, never a decrease -- until the program ends; then interpreter shutdown destroys them
all and the count drops to zero. ``--gc-threshold`` has no effect here.

    python -m trace_quit.workloads engine-per-call-gc-off [--dsn DSN] [--tasks N]
"""

import gc
import sys

from trace_quit.workloads import harness
from trace_quit.workloads.engine_per_call import configure, get_db_session  # noqa: F401


def before_run(args):
    gc.disable()


def main(argv=None):
    return harness.main("engine-per-call-gc-off", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
