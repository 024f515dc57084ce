"""Overhead of the pytest plugin on a small SQLAlchemy-style suite (docs/pytest-plugin.md).

    .venv/bin/python tests/bench/pytest_plugin_overhead.py [--tests 200] [--runs 5] [--plugin-args ARGS]

Writes a suite of ``--tests`` tests into a temporary directory — each checks out a pooled
connection of a session-scoped Engine and runs two queries through an ORM Session, every
tenth also creates and disposes an Engine of its own — starts a disposable server, then runs
it alternately without and with ``--trace-quit`` and prints the median wall time of each.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFTEST = '''
import os
import pytest
import sqlalchemy as sa


@pytest.fixture(scope="session")
def engine():
    engine = sa.create_engine(os.environ["TQ_URL"], pool_size=2)
    yield engine
    engine.dispose()
'''

TESTS = '''
import os
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session


@pytest.mark.parametrize("i", range({n}))
def test_query(engine, i):
    with Session(engine) as session:
        assert session.execute(sa.text("SELECT 1")).scalar() == 1
        assert session.execute(sa.text("SELECT COUNT(*) FROM users")).scalar() == 100
    if i % 10 == 0:
        own = sa.create_engine(os.environ["TQ_URL"])
        try:
            with own.connect() as conn:
                conn.execute(sa.text("SELECT 2"))
        finally:
            own.dispose()
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plugin-args", default="--trace-quit", help="the plugin's options (default: --trace-quit)")
    args = parser.parse_args()
    from trace_quit.workloads import dsn
    from trace_quit.workloads.server import DisposableServer

    with DisposableServer() as server, tempfile.TemporaryDirectory() as suite:
        with open(os.path.join(suite, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        with open(os.path.join(suite, "test_suite.py"), "w") as f:
            f.write(TESTS.replace("{n}", str(args.tests)))
        env = dict(os.environ, TQ_URL=dsn.sqlalchemy_url(server.dsn_socket))
        times = {"off": [], "on": []}
        for _ in range(args.runs):
            for mode in ("off", "on"):
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", suite]
                if mode == "on":
                    cmd += args.plugin_args.split()
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True)
                times[mode].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    sys.exit(proc.stdout + proc.stderr)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        print("%d tests, %d runs each: median %.2f s without the plugin, %.2f s with %s (%+.1f%%, "
              "%+.2f ms per test)" % (args.tests, args.runs, off, on, args.plugin_args, 100 * (on - off) / off,
                                     1000 * (on - off) / args.tests))


if __name__ == "__main__":
    main()
