"""Over TLS the COM_QUIT bytes are encrypted on the socket: reported as "encrypted", never "not_sent"."""

import subprocess

import pytest

from bpf_harness import trace_command
from tq_support import VENV_PY

pytestmark = [pytest.mark.bpf, pytest.mark.server]

PROG = r"""
import sys, MySQLdb
from trace_quit.workloads import dsn
kw = dsn.parse(sys.argv[1])
for _ in range(3):
    c = MySQLdb.connect(ssl={"ca": sys.argv[2]}, ssl_mode="REQUIRED", **kw)
    cur = c.cursor()
    cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
    assert cur.fetchone()[1], "not encrypted"
    c.close()
"""


def test_tls_close_is_reported_encrypted(tmp_path):
    from trace_quit.workloads.server import DisposableServer

    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    with DisposableServer(extra_args=["--ssl-cert=" + cert, "--ssl-key=" + key]) as server:
        run = trace_command([VENV_PY, "-c", PROG, server.dsn_tcp, cert], output_path=str(tmp_path / "out"))
    assert run.status == 0, run.output
    assert run.close_causes() == {("explicit_close", None): 3}
    assert run.wire_states() == {"encrypted": 3}
    assert all(e["tls"] and not e["quit"] for e in run.of("bpf_wire"))
