"""Attach and detach 20 times in a row to a service busy inside the client library: it never notices.

The service (attach_service.py) runs untraced; four load threads keep its handler threads
inside ``_mysql.connect()``, queries and ``close()`` all along (an Engine per request with
NullPool, raw MySQLdb and PyMySQL connections over the Unix socket), so every injection and
every detach lands while other threads are in the middle of those calls. Each round:
``trace-quit --pid``, the agent injected, three leaking Engines over TCP (an Engine per
call, closed by the collector), Ctrl-C. Checked per round: the report names the
leaking line with its three connections, all by the GC, and those COM_QUITs are the server's
general log's (the TCP connections' Quits in the window; the load is on the socket). Over all
rounds: the service never died and wrote nothing to stderr, and not one request failed.

Its duration is stated in docs/attach.md.
"""

import os
import signal
import threading
import time
import urllib.request

import pytest
from test_attach import PYTHONS, Service, _leak_line, attach, wait_for
from tq_support import cpython_param, venv_python_for

from trace_quit.analysis.capture import load
from trace_quit.analysis.render_json import to_dict
from trace_quit.analysis.report import build_report

pytestmark = [pytest.mark.bpf, pytest.mark.root, pytest.mark.server, pytest.mark.slow]

ROUNDS = int(os.environ.get("TRACE_QUIT_STRESS_ROUNDS", "20"))  # fewer for a quick local look
LEAKS = 3  # /leak3
PAUSE_S = 0.05  # between one load thread's requests (see BusyService._churn)
CHURN = ("/churn", "/churn", "/raw", "/pymysql")
STRESS_PYTHONS = dict(PYTHONS, **{"3.11": venv_python_for("3.11")})


class BusyService(Service):
    """The service with its socket endpoints driven by four threads, each request a connect and a close."""

    def __init__(self, python, server, tmp_path):
        super().__init__(python, server.dsn_tcp, tmp_path, extra_args=(server.dsn_socket,))
        self.load_threads = [threading.Thread(target=self._churn, args=(path,), daemon=True) for path in CHURN]

    def _churn(self, path):
        # A short pause between requests: the CPU (2 cores here) stays shared with the tracer's
        # compile, yet at any moment some handler thread is inside a connect, query or close.
        while not self.stop_load.wait(PAUSE_S):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=30) as r:
                    assert r.status == 200 and r.read() == b"1"
                self.ok += 1
            except Exception as exc:  # every failure counts; the test asserts there are none
                self.failed += 1
                self.errors.append("%s: %r" % (path, exc))


def tcp_quits(log):
    """Quits of the connections the log shows connecting over TCP (the leaking endpoint's)."""
    tcp = {cid for cid, command, arg in log if command == "Connect" and "TCP/IP" in arg}
    return sum(1 for cid, command, _ in log if command == "Quit" and cid in tcp)


@pytest.mark.parametrize("which", [w if w == "debian" else cpython_param(w) for w in sorted(STRESS_PYTHONS)])
def test_twenty_attaches_under_load_never_harm_the_service(which, bpf_server, tmp_path):
    python = STRESS_PYTHONS[which]
    assert os.path.exists(python), "%s is missing: run scripts/setup.sh" % python
    site = "attach_service.py:%d in leaky_query" % _leak_line()
    service = BusyService(python, bpf_server, tmp_path)
    t0 = time.monotonic()
    timings = []  # (start to injected, injected to reported) per round
    try:
        service.start_load()
        time.sleep(0.5)
        for n in range(ROUNDS):
            t_round = time.monotonic()
            capture = str(tmp_path / ("round%d.tqcap" % n))
            tracer = attach(service.proc.pid, capture, "--inject-timeout", "10")
            wait_for(capture, b"agent injected into process %d" % service.proc.pid, tracer)
            t_injected = time.monotonic()
            log_from = bpf_server.general_log_size()
            assert service.get("/leak3") == "3"  # three Engines leaked, then collected by gc.collect()
            deadline = time.monotonic() + 20
            while tcp_quits(bpf_server.general_log(log_from)) < LEAKS and time.monotonic() < deadline:
                time.sleep(0.05)  # the server's log write
            quits = tcp_quits(bpf_server.general_log(log_from))
            os.killpg(tracer.pid, signal.SIGINT)  # Ctrl-C: detach, under the load
            _, err = tracer.communicate(timeout=120)
            assert tracer.returncode == 0, err
            assert service.proc.poll() is None, "round %d: the service died (%s)" % (n, service.stderr_so_far())
            report = to_dict(build_report(load(capture)))
            leaky = [e for e in report["engines"] if e["call_site"].endswith(site)]
            assert len(leaky) == 1, (n, [e["call_site"] for e in report["engines"]])
            assert leaky[0]["created"] == LEAKS and leaky[0]["connections_by_cause"] == {"gc": LEAKS}, (n, leaky)
            assert quits == LEAKS, (n, quits)
            assert "died" not in err and "not injected" not in err, (n, err)
            timings.append((t_injected - t_round, time.monotonic() - t_injected))
        time.sleep(0.3)
        service.end_load()
        assert service.proc.poll() is None
        assert service.failed == 0, (service.errors[:3], service.stderr_so_far())
        assert service.stderr_so_far() == ""
        assert service.ok > ROUNDS * 10
    finally:
        service.close()
    print("\n[%s] %d attach/detach rounds under load in %.1f s (per round: %.1f s to injected, %.1f s to the "
          "report); %d requests, 0 failed" % (which, ROUNDS, time.monotonic() - t0,
                                              sum(a for a, _ in timings) / len(timings),
                                              sum(b for _, b in timings) / len(timings), service.ok))
