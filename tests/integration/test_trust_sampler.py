"""The server sampler's failure is said while running and in the report; ✓ only with samples."""

import json
import subprocess
import sys

import pytest

from tq_support import TRACE_QUIT

pytestmark = pytest.mark.server


def test_a_wrong_dsn_password_is_said_and_the_sampler_is_not_a_layer(server, tmp_path):
    capture = str(tmp_path / "x.tqcap")
    wrong = "mysql://%s:not-%s@127.0.0.1:%d/%s" % (server.user, server.password, server.port, server.database)
    redacted = "mysql://%s:***@127.0.0.1:%d/%s" % (server.user, server.port, server.database)
    proc = subprocess.Popen(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", capture, "--dsn", wrong,
                                          "--", sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    # While the program still runs (it waits for our stdin), the first error is already on stderr.
    first = proc.stderr.readline()
    assert first.startswith("trace-quit: server sampler: query on %s: " % redacted) and "Access denied" in first
    proc.stdin.close()
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert "server sampler: no samples (first error: query on %s: " % redacted in rest
    assert server.password not in first + rest
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert report["layers"]["sampler"] is False
    assert [n["text"] for n in report["notes"] if n["text"].startswith("server sampler:")] == [
        first[len("trace-quit: "):].rstrip("\n"), rest.splitlines()[0][len("trace-quit: "):]]
    text = subprocess.run(TRACE_QUIT + ["report", capture], capture_output=True, text=True, check=True).stdout
    assert "server sampler –" in text and "Access denied" in text
    with open(capture) as f:
        assert server.password not in f.read()


def test_a_monitor_account_without_the_process_grant_is_said_not_counted(server, tmp_path):
    """It counted 0 (it sees only its own threads) and the report said `server sampler ✓`."""
    import MySQLdb

    from trace_quit.tracer import dsn as dsnlib

    admin = MySQLdb.connect(**dsnlib.parse(server.admin_dsn))
    try:
        cur = admin.cursor()
        cur.execute("CREATE USER IF NOT EXISTS 'tq_nogrant'@'127.0.0.1' IDENTIFIED BY 'ng-pw'")
        admin.commit()
    finally:
        admin.close()
    capture = str(tmp_path / "x.tqcap")
    dsn = "mysql://tq_nogrant:ng-pw@127.0.0.1:%d/" % server.port
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", capture, "--dsn", dsn,
                                        "--sample-user", server.user, "--",
                                        sys.executable, "-c", "import time; time.sleep(1)"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    expected = ("trace-quit: server sampler: query on mysql://tq_nogrant:***@127.0.0.1:%d/: the account "
                "tq_nogrant@127.0.0.1 lacks the PROCESS privilege, so PROCESSLIST shows it only its own connections, "
                "not %s's: GRANT PROCESS ON *.* TO it, or give --dsn an account that has it\n"
                % (server.port, server.user))
    assert proc.stderr.startswith(expected)
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert report["layers"]["sampler"] is False


def test_an_application_account_without_the_process_grant_counts_its_own_connections(server, tmp_path):
    """Most applications run with such an account: its own view is exactly its connections."""
    import MySQLdb

    from trace_quit.tracer import dsn as dsnlib

    admin = MySQLdb.connect(**dsnlib.parse(server.admin_dsn))
    try:
        cur = admin.cursor()
        for host in ("127.0.0.1", "localhost"):
            cur.execute("CREATE USER IF NOT EXISTS 'tq_plain'@'%s' IDENTIFIED BY 'pl-pw'" % host)
            cur.execute("GRANT ALL PRIVILEGES ON %s.* TO 'tq_plain'@'%s'" % (server.database, host))
        admin.commit()
    finally:
        admin.close()
    # Seven connections of its own held for 1.5 s; tq_app's three beside them are not its business.
    prog = tmp_path / "hold.py"
    prog.write_text(
        "import time, MySQLdb\n"
        "mine = [MySQLdb.connect(host='127.0.0.1', port=%d, user='tq_plain', password='pl-pw') for _ in range(7)]\n"
        "other = [MySQLdb.connect(host='127.0.0.1', port=%d, user=%r, password=%r) for _ in range(3)]\n"
        "time.sleep(1.5)\n"
        "for c in mine + other: c.close()\n" % (server.port, server.port, server.user, server.password))
    capture = str(tmp_path / "own.tqcap")
    dsn = "mysql://tq_plain:pl-pw@127.0.0.1:%d/" % server.port
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--quiet", "--format", "none", "-o", capture, "--dsn", dsn,
                                        "--", sys.executable, str(prog)],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert ("trace-quit: server sampler: the account tq_plain@127.0.0.1 has no PROCESS privilege: the server count "
            "covers the connections of user tq_plain only (what this account may see)\n") in proc.stderr
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert report["layers"]["sampler"] is True
    counts = [e["count"] for e in _events(capture) if e.get("k") == "server_count"]
    assert len(counts) >= 5 and max(counts) == 7
    assert report["timeline"]["server_own_user"] == "tq_plain"
    text = subprocess.run(TRACE_QUIT + ["report", capture], capture_output=True, text=True, check=True).stdout
    assert "server (PROCESSLIST, user tq_plain only) max 7 at" in text


def _events(path):
    from trace_quit.analysis.capture import load

    return load(path, raw=True).events
