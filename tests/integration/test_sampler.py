"""The sampler against a real server: exact counts, its own connection excluded."""

import statistics
import threading
import time

import pytest

from trace_quit.tracer import events as ev
from trace_quit.tracer.sampler import Sampler
from trace_quit.workloads import dsn as dsnlib

pytestmark = pytest.mark.server


class Recorder:
    def __init__(self):
        self.samples = []
        self.cond = threading.Condition()

    def __call__(self, t, count):
        with self.cond:
            self.samples.append((t, count))
            self.cond.notify_all()

    def next_count(self, timeout=5):
        """The count of the first sample that starts after this call."""
        with self.cond:
            n = len(self.samples) + 1  # the sample in flight may have started before the call
            assert self.cond.wait_for(lambda: len(self.samples) > n, timeout)
            return self.samples[-1][1]


@pytest.fixture
def own_server(server_factory):
    return server_factory()  # nobody else's connections in the counts


@pytest.mark.parametrize("as_admin", [False, True], ids=["as-the-app-user", "as-admin"])
def test_counts_exactly_the_users_connections(own_server, as_admin):
    import MySQLdb

    rec = Recorder()
    dsn = own_server.admin_dsn if as_admin else own_server.dsn_tcp
    with Sampler(dsn, rec, user="tq_app", interval=0.05) as sampler:
        assert rec.next_count() == 0  # its own connection is not counted
        conns = [MySQLdb.connect(**dsnlib.parse(own_server.dsn_socket)) for _ in range(3)]
        assert rec.next_count() == 3
        conns.pop().close()
        assert rec.next_count() == 2
        for c in conns:
            c.close()
        assert rec.next_count() == 0
    assert sampler.errors == 0


def test_timestamps_are_monotonic_ns_at_the_interval(own_server):
    rec = Recorder()
    before = ev.now_ns()
    with Sampler(own_server.admin_dsn, rec, user="tq_app", interval=0.1):
        time.sleep(1.25)
    after = ev.now_ns()
    ts = [t for t, _ in rec.samples]
    assert 8 <= len(ts) <= 14
    assert before <= ts[0] and ts[-1] <= after and ts == sorted(ts)
    assert 0.08e9 <= statistics.median(b - a for a, b in zip(ts, ts[1:])) <= 0.13e9


def test_a_failing_sink_and_a_killed_connection_do_not_stop_it(own_server):
    seen = []

    def sink(t, count):
        seen.append(count)
        if len(seen) == 2:
            raise RuntimeError("sink broke")

    sampler = Sampler(own_server.dsn_tcp, sink, interval=0.05).start()
    try:
        time.sleep(0.3)
        admin = own_server.admin_connect()
        cur = admin.cursor()
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'tq_app'")
        for (conn_id,) in cur.fetchall():
            cur.execute("KILL %d" % conn_id)  # the sampler's own connection
        admin.close()
        n = len(seen)
        time.sleep(0.5)
    finally:
        sampler.stop()
    assert len(seen) > n  # it reconnected and went on
    assert sampler.errors >= 2  # the sink's exception and the killed connection
    assert not sampler._thread.is_alive()
