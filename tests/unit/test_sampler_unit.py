"""The sampler never raises out, whatever goes wrong (no server needed)."""

import socket
import time

from trace_quit.tracer.sampler import CsvSink, Sampler


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_server_is_counted_not_raised():
    calls = []
    sampler = Sampler("mysql://u:hunter2@127.0.0.1:%d/db" % closed_port(), lambda t, c: calls.append(c),
                      interval=0.05).start()
    time.sleep(0.4)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 2
    assert calls == [] and sampler.samples == 0
    assert sampler.errors >= 3  # it kept retrying, one attempt per tick
    assert "hunter2" not in sampler.last_error and "***" in sampler.last_error


def test_csv_sink_writes_seconds_since_t0(tmp_path):
    path = tmp_path / "counts.csv"
    sink = CsvSink(str(path), t0_ns=1000000000)
    sink(1500000000, 3)
    sink(2250000000, 7)
    sink(3000000000, 2)
    sink.close()
    sink(4000000000, 9)  # after close: ignored, not an error
    assert path.read_text() == "t_s,count\n0.500,3\n1.250,7\n2.000,2\n"
    assert (sink.max_count, sink.last_count) == (7, 2)
