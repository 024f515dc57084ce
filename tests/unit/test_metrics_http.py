"""The metrics endpoint under a hostile local user: bounded labels, no broken scrape, bounded
connections, slow clients idled out, linger for the scrapers it served (tracer/metrics_http.py)."""

import socket
import time
import urllib.request

from trace_quit.tracer import events as ev
from trace_quit.tracer import metrics, metrics_http

PID = 4242


def _scrape(port, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=timeout) as r:
        return r.status, r.read().decode()


def _serve():
    return metrics.serve({"cwd": "/srv/app", "layers": {"agent": True, "bpf": False}}, "127.0.0.1", 0)


def _forged(n):
    """n connections, each opened at its own call site and destroyed with its own generation."""
    t = ev.now_ns() - 10 * 10**9
    out = []
    for i in range(n):
        base = {"t": t + 10 * i, "src": "agent", "pid": PID, "tid": PID, "conn": 0x1000 + i}
        out.append(dict(base, k="conn_open", stack=["/srv/app/site%d.py:%d in f\x1b[2J" % (i, i)]))
        out.append(dict(base, k="conn_destroy", t=base["t"] + 1, cause="gc\x1b]0;x" if i % 2 else "gc",
                        gen=3 + i, cid=None))
    out.append({"k": "gc_counts", "t": t, "src": "agent", "pid": PID, "tid": PID,
                "by_gen": {"0": 10**400, "1": -5, "9": 1, "2": 3}})
    out.append({"k": "agent_lost", "t": t, "src": "agent", "pid": PID, "tid": PID, "n": 10**400})
    return out


def test_forged_values_neither_multiply_series_nor_break_a_scrape():
    server = _serve()
    try:
        for e in _forged(10000):
            server.exporter.observe(e)
        server.exporter.finish()
        status, body = _scrape(server.port)
    finally:
        server.close()
    assert status == 200 and "trace_quit_tracer_info" in body
    series = [line for line in body.splitlines() if line.startswith("trace_quit_com_quit_total{")]
    assert 0 < len(series) <= (metrics.TOP_SITES + 1) * 2   # 20 sites and "other", by cause gc/unknown
    assert all('generation=""' in line for line in series)      # 3.. are no generation
    assert all('cause="gc"' in line or 'cause="unknown"' in line for line in series)
    assert "\x1b" not in body
    gcs = [line for line in body.splitlines() if line.startswith("trace_quit_gc_collections_total{")]
    assert gcs == ['trace_quit_gc_collections_total{generation="2"} 3.0']


def test_a_family_that_fails_is_left_out_of_that_scrape_only(monkeypatch):
    server = _serve()
    try:
        def broken():
            raise OverflowError("forged")
            yield

        monkeypatch.setattr(server.exporter, "_gc", broken)
        status, body = _scrape(server.port)
        status2, body2 = _scrape(server.port)
    finally:
        server.close()
    assert status == status2 == 200
    assert "trace_quit_com_quit" in body and "trace_quit_gc_collections" not in body
    assert "trace_quit_scrape_errors_total 2.0" in body2


def test_idle_sockets_are_bounded_and_a_scrape_still_gets_in(monkeypatch):
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT_S", 1.0)
    server = _serve()
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        t0 = time.monotonic()
        status, _ = _scrape(server.port)
        assert status == 200 and time.monotonic() - t0 < 3
        assert len(server.endpoint.conns) <= metrics_http.MAX_CONNECTIONS
        time.sleep(1.6)  # idled out: every socket the endpoint still held is closed
        assert len(server.endpoint.conns) == 0
        idle[-1].settimeout(2)
        assert idle[-1].recv(10) == b""
    finally:
        for s in idle:
            s.close()
        server.close()


def test_linger_waits_for_the_scrapers_it_served_not_for_anyone(monkeypatch):
    server = _serve()
    identities = iter([("uid", 111), ("uid", 222), ("uid", 111)])
    monkeypatch.setattr(metrics_http, "peer_identity", lambda sock: next(identities))
    try:
        _scrape(server.port)                   # the monitoring's scraper, during the run (uid 111)
        server.exporter.finish()
        _scrape(server.port)                   # someone else, after the end (uid 222)
        t0 = time.monotonic()
        server.linger(0.6)
        assert time.monotonic() - t0 >= 0.55   # not ended by uid 222's scrape
        _scrape(server.port)                   # the monitoring's scraper reads the final counts
        t0 = time.monotonic()
        server.linger(5)
        assert time.monotonic() - t0 < 1
    finally:
        server.close()


def test_the_peer_is_known_by_the_uid_owning_its_socket():
    import os

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        assert metrics_http.peer_identity(conn) == ("uid", os.getuid())
    finally:
        for s in (conn, client, listener):
            s.close()
