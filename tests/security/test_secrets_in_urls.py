"""A password in an Engine URL's query (``?passwd=``, URL-encoded) reaches no capture, report,
dump or log (docs/security.md: "No password in any output").

As a user meets it: an application builds its URL with the password in the query, runs under
``trace-quit -- python main.py``, then reads every form of the result.
"""

import subprocess
import urllib.parse

import pytest

from attacker import sudo_env
from tq_support import TRACE_QUIT, VENV_PY

pytestmark = [pytest.mark.server]

PASSWORD = "p@ss&w/rd?x=1 %é"
MAIN = r"""
import os, sys, urllib.parse
from sqlalchemy import create_engine, text
host, port, user = sys.argv[1:4]
pw = os.environ["DB_PASSWORD"]   # from the environment, as a deployment gives it
url = "mysql+mysqldb://%s@%s:%s/tq?charset=utf8mb4&passwd=" % (user, host, port) + urllib.parse.quote(pw, safe="")
engine = create_engine(url)
with engine.connect() as conn:
    conn.execute(text("SELECT 1"))
engine.dispose()
"""


def test_a_password_in_the_engine_urls_query_is_in_no_output(attacker, shared_tmp, server):
    admin = server.admin_connect()
    try:
        cur = admin.cursor()
        cur.execute("CREATE USER IF NOT EXISTS 'tq_pw'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        cur.execute("GRANT ALL ON tq.* TO 'tq_pw'@'%'")
    finally:
        admin.close()
    (shared_tmp / "main.py").write_text(MAIN)
    run = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "json", "-o", "run.tqcap", "--", VENV_PY,
                                       "main.py", "127.0.0.1", str(server.port), "tq_pw"],
                         cwd=str(shared_tmp), env=sudo_env(attacker, DB_PASSWORD=PASSWORD), capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    outputs = {"capture": (shared_tmp / "run.tqcap").read_text(errors="replace"), "json": run.stdout,
               "stderr": run.stderr}
    assert '"k":"engine_create"' in outputs["capture"] and "passwd=***" in outputs["capture"]
    for fmt in ("text", "html", "perfetto"):
        r = subprocess.run(TRACE_QUIT + ["report", "run.tqcap", "--format", fmt], cwd=str(shared_tmp),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outputs[fmt] = r.stdout + r.stderr
    dump = subprocess.run(TRACE_QUIT + ["dump", "run.tqcap"], cwd=str(shared_tmp), capture_output=True, text=True,
                          timeout=120)
    outputs["dump"] = dump.stdout + dump.stderr
    forms = {PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote_plus(PASSWORD),
             urllib.parse.quote(PASSWORD), "p@ss", "w/rd"}
    for name, text in outputs.items():
        for form in forms:
            assert form not in text, "%s holds %r" % (name, form)
