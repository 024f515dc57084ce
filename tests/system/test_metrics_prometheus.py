"""``trace-quit run --metrics-port`` scraped by a real Prometheus (Debian's ``prometheus`` package).

The test starts its own ``prometheus`` binary — never the package's service — on a free
loopback port, with a temporary config (1 s scrape interval, one target: trace-quit) and
temporary storage, and stops it at the end. After the known-causes workload, Prometheus's
HTTP API must hold exactly the capture report's counts, and those are tests/tq_support's
KNOWN_CAUSES. ``last_over_time`` reads the last scraped value: once trace-quit has exited,
a failed scrape marks the series stale and a plain instant query would return nothing.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tq_support import KNOWN_CAUSES, REPO, TRACE_QUIT, VENV_PY

pytestmark = [pytest.mark.server]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus(tmp_path):
    """(prometheus base URL, the port trace-quit must serve on): a private Prometheus scraping it."""
    from trace_quit.workloads.server import free_port

    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("no prometheus binary: apt-get install prometheus (scripts/setup.sh installs it)")
    target, web = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: trace-quit\n    static_configs:\n"
        "      - targets: ['127.0.0.1:%d']\n" % target)
    log = open(str(tmp_path / "prometheus.log"), "wb")
    proc = subprocess.Popen([PROMETHEUS, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp_path / "data"),
                             "--web.listen-address=127.0.0.1:%d" % web],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = "http://127.0.0.1:%d" % web
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.2)
        yield base, target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(base, promql):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def by_cause(base):
    rows = query(base, "sum by (cause, generation) (last_over_time(trace_quit_com_quit_total[10m]))")
    return {(r["metric"].get("cause"), r["metric"].get("generation") or None): int(float(r["value"][1]))
            for r in rows}


@pytest.mark.parametrize("layers", [
    "agent",
    # Both layers: the kernel layer keeps the shutdown contract (docs/causes.md: shutdown begins
    # after the last atexit handler), or the 5 atexit closes would be "unknown" in the report and
    # in Prometheus alike.
    pytest.param("agent+bpf", marks=pytest.mark.bpf),
])
def test_prometheus_reads_the_known_causes_counts(layers, prometheus, server, tmp_path):
    base, port = prometheus
    capture = str(tmp_path / "kc.tqcap")
    cmd = TRACE_QUIT + (["--no-bpf"] if layers == "agent" else []) + ["--quiet", "--format", "none", "-o", capture, "--metrics-port", str(port),
                        "--metrics-linger", "30", "--", VENV_PY, "-m", "trace_quit.workloads", "known-causes",
                        "--dsn", server.dsn_socket]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr

    report = json.loads(subprocess.run(TRACE_QUIT + ["report", "--format", "json", capture], capture_output=True,
                                       text=True, timeout=120, check=True).stdout)
    expected = {}
    for cause, n in report["com_quit"]["by_cause"].items():
        if n and cause != "gc":
            expected[(cause, None)] = n
    for gen, n in report["com_quit"]["gc_by_generation"].items():
        if n:
            expected[("gc", int(gen))] = n

    # The final scrape is in (trace-quit lingered for it); give Prometheus a moment to store it.
    deadline = time.monotonic() + 15
    while True:
        got = {(c, int(g) if g is not None else None): n for (c, g), n in by_cause(base).items()}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == expected
    assert expected == KNOWN_CAUSES
    opened = query(base, "sum(last_over_time(trace_quit_connections_opened_total[10m]))")
    assert int(float(opened[0]["value"][1])) == report["connections"]["opened"] == 44
    gcs = query(base, "sum by (generation) (last_over_time(trace_quit_gc_collections_total[10m]))")
    assert {r["metric"]["generation"]: int(float(r["value"][1])) for r in gcs} == {
        g: n for g, n in report["gc"]["by_generation"].items()}
    lost = query(base, "sum(last_over_time(trace_quit_lost_events_total[10m]))")
    assert int(float(lost[0]["value"][1])) == 0
    up = query(base, "last_over_time(trace_quit_program_running[10m])")
    assert up[0]["value"][1] == "0"  # the last scrape came after the program ended
    # Every query of the Grafana dashboard is valid PromQL on this Prometheus.
    with open(os.path.join(REPO, "docs", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    for expr in exprs:
        query(base, expr.replace("$instance", ".*").replace("$__range", "10m"))


def test_metrics_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "-o", str(tmp_path / "x.tqcap"), "--metrics-port",
                                            str(port), "--", VENV_PY, "-c", "pass"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 69
    assert proc.stderr == "trace-quit: port %d on 127.0.0.1 is in use: choose another --metrics-port\n" % port
    assert not os.path.exists(str(tmp_path / "x.tqcap"))


PID_PROGRAM = '''
import json, os, sys, time
import MySQLdb

kw = json.loads(os.environ["TQ_CONNECT"])
deadline = time.monotonic() + 240
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:   # until the tracer is attached
    time.sleep(0.05)
for _ in range(2):
    MySQLdb.connect(**kw).close()
for _ in range(3):
    conn = MySQLdb.connect(**kw)
    del conn
'''


@pytest.mark.bpf
def test_metrics_of_an_attached_process_equal_its_report(server, tmp_path):
    """``--pid PID --metrics-port``: the kernel layer alone, 2 close() and 3 refcount drops."""
    from trace_quit.workloads.server import free_port

    go = tmp_path / "go"
    capture = str(tmp_path / "pid.tqcap")
    env = dict(os.environ, TQ_CONNECT=json.dumps({"unix_socket": server.socket_path, "user": server.user,
                                                  "password": server.password, "database": server.database}))
    program = subprocess.Popen([VENV_PY, "-c", PID_PROGRAM, str(go)], env=env)
    port = free_port()
    tracer = subprocess.Popen(TRACE_QUIT + ["--pid", str(program.pid), "--quiet", "--format", "none", "-o", capture,
                                            "--metrics-port", str(port), "--metrics-linger", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (os.path.exists(capture) and '"child_start"' in open(capture).read()):
            assert tracer.poll() is None and time.monotonic() < deadline, tracer.communicate()
            time.sleep(0.1)
        go.write_text("go")
        assert program.wait(timeout=120) == 0
        while True:  # the tracer notices the exit within 0.1 s, then attributes what remains
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
                body = r.read().decode()
            if "trace_quit_program_running 0.0" in body:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        out, err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, err
    finally:
        if program.poll() is None:
            program.kill()
        if tracer.poll() is None:
            tracer.kill()
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", "--format", "json", capture], capture_output=True,
                                       text=True, timeout=120, check=True).stdout)
    assert {c: n for c, n in report["com_quit"]["by_cause"].items() if n} == {"explicit_close": 2, "refcount": 3}
    samples = dict(re.findall(r'^trace_quit_com_quit_total\{call_site="[^"]*",cause="(\w+)",generation=""\} (\S+)$',
                              body, re.M))
    assert {c: int(float(n)) for c, n in samples.items()} == {"explicit_close": 2, "refcount": 3}
    assert re.search(r"^trace_quit_connections_opened_total\{[^}]*\} 5\.0$", body, re.M)
