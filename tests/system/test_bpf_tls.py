"""Over TLS the COM_QUIT bytes are encrypted on the socket: reported as "encrypted", never "not_sent"."""

import pytest

from bpf_harness import trace_command
from tq_support import VENV_PY, tls_server

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
    with tls_server(tmp_path) as server:
        run = trace_command([VENV_PY, "-c", PROG, server.dsn_tcp, server.tls_cert],
                            output_path=str(tmp_path / "out"))
    assert run.status == 0, run.output
    assert run.close_causes() == {("explicit_close", None): 3}
    assert run.wire_states() == {"encrypted": 3}
    assert all(e["tls"] and not e["quit"] for e in run.of("bpf_wire"))
