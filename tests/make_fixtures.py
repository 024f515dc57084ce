"""Record real captures for tests/unit/data (root: both layers, a disposable server).

    sudo .venv/bin/python tests/make_fixtures.py OUTDIR [NAME ...]

Writes, into OUTDIR:
- known-causes-pymysql.tqcap: PyMySQL, both layers (destructions without COM_QUIT);
- known-causes-bounded.tqcap: known-causes with --max-capture reached mid-run (the ends after
  it counted from the kernel's evidence rows);
- tls.tqcap: mysqlclient over TLS (the COM_QUIT bytes encrypted on the socket): 2 close(),
  2 refcount, 2 gc, 1 shutdown;
- attach.tqcap: ``trace-quit --pid`` on tests/system/attach_service.py (a threaded HTTP service,
  its shared pool open before the attach), 3 leaked Engines collected by ``gc.collect()``,
  then Ctrl-C (detach).
Gzip them into tests/unit/data, then regenerate the golden reports
(tests/unit/test_golden_reports.py). The server's password is checked absent from every capture.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tq_support import TRACE_QUIT, VENV_PY, tls_server  # noqa: E402

TRACE = TRACE_QUIT + ["--format", "none", "--quiet", "--force"]

TLS_PROGRAM = r"""
import gc, sys, MySQLdb
from trace_quit.workloads import dsn
kw = dict(dsn.parse(sys.argv[1]), ssl={"ca": sys.argv[2]}, ssl_mode="REQUIRED")
def used():
    c = MySQLdb.connect(**kw)
    cur = c.cursor()
    cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
    assert cur.fetchone()[1], "not encrypted"
    cur.close()
    return c
for _ in range(2):
    used().close()                      # explicit_close
for _ in range(2):
    c = used(); del c                   # refcount
gc.disable()
for _ in range(2):
    box = {"c": used()}; box["self"] = box; del box
gc.collect()                            # gc (generation 2)
KEPT = used()                           # shutdown
"""


def _workload(name, server, outdir, workload, extra=()):
    capture = os.path.join(outdir, name + ".tqcap")
    subprocess.run(TRACE + ["-o", capture] + list(extra) + ["--", VENV_PY, "-m", "trace_quit.workloads"]
                   + workload + ["--dsn", server.dsn_socket], check=True, cwd=outdir)
    return capture


def known_causes_pymysql(server, outdir):
    return _workload("known-causes-pymysql", server, outdir, ["known-causes-pymysql"])


def known_causes_bounded(server, outdir):
    return _workload("known-causes-bounded", server, outdir, ["known-causes"], ["--max-capture", "64K"])


def tls(server, outdir):
    capture = os.path.join(outdir, "tls.tqcap")
    subprocess.run(TRACE + ["-o", capture, "--", VENV_PY, "-c", TLS_PROGRAM, server.dsn_tcp, server.tls_cert],
                   check=True, cwd=outdir)
    return capture


def _get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30) as r:
        return r.read().decode()


def attach(server, outdir):
    capture = os.path.join(outdir, "attach.tqcap")
    port_file = os.path.join(outdir, "attach.port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    service = subprocess.Popen([VENV_PY, os.path.join(HERE, "system", "attach_service.py"), server.dsn_tcp,
                                port_file], stdout=subprocess.DEVNULL)
    try:
        while not os.path.exists(port_file):
            assert service.poll() is None, "the service died"
            time.sleep(0.05)
        port = int(open(port_file).read())
        _get(port, "/ok")  # the shared pool's connection, open before the attach
        tracer = subprocess.Popen(TRACE + ["--pid", str(service.pid), "-o", capture], cwd=outdir,
                                  start_new_session=True)
        while not (os.path.exists(capture) and b"agent injected" in open(capture, "rb").read()):
            assert tracer.poll() is None, "the tracer ended early"
            time.sleep(0.05)
        for _ in range(3):
            _get(port, "/leak")
        _get(port, "/ok")
        _get(port, "/collect")
        time.sleep(0.5)
        os.killpg(tracer.pid, signal.SIGINT)
        assert tracer.wait(120) == 0
    finally:
        service.kill()
        service.wait()
    return capture


RECORDINGS = {f.__name__.replace("_", "-"): f for f in (known_causes_pymysql, known_causes_bounded, tls, attach)}


def main(outdir, only=()):
    os.makedirs(outdir, exist_ok=True)
    with tls_server(outdir) as server:
        for name, record in sorted(RECORDINGS.items()):
            if only and name not in only:
                continue
            capture = record(server, outdir)
            with open(capture, "rb") as f:
                assert server.password.encode() not in f.read(), "password in %s" % capture
            print(capture)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
