"""The disposable server: it answers over both transports, and leaves nothing behind.

Not on stop(), and not when its owner is SIGKILLed (the supervisor process cleans up).
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from trace_quit.workloads import dsn as dsnlib

pytestmark = pytest.mark.server


def query(dsn, sql):
    import MySQLdb

    conn = MySQLdb.connect(**dsnlib.parse(dsn))
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()


def processes_mentioning(path):
    """Live (non-zombie) pids whose command line contains ``path``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                if path.encode() not in f.read():
                    continue
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry))
    return found


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_users_table_over_socket_and_over_tcp(server):
    since = server.general_log_size()
    assert query(server.dsn_socket, "SELECT count(*) FROM users") == ((100,),)
    assert query(server.dsn_tcp, "SELECT count(*) FROM users") == ((100,),)
    # The general log proves the two went over different transports, as the app user.
    connects = [arg for _, cmd, arg in server.general_log(since) if cmd == "Connect"]
    assert connects == ["tq_app@localhost on tq using Socket", "tq_app@127.0.0.1 on tq using TCP/IP"]


def test_private_to_its_directory_and_loopback(server):
    ((datadir, socket_path, port, bind, general_log),) = query(
        server.dsn_socket, "SELECT @@datadir, @@socket, @@port, @@bind_address, @@general_log_file")
    assert datadir.rstrip("/") == os.path.join(server.tmpdir, "data")
    assert socket_path == server.socket_path and socket_path.startswith(server.tmpdir + "/")
    assert port == server.port != 3306
    assert bind == "127.0.0.1"
    assert general_log == server.general_log_path
    assert stat.S_IMODE(os.stat(server.tmpdir).st_mode) == 0o700
    assert not os.path.exists(os.path.join(server.tmpdir, "init.sql"))  # it held the password


def test_admin_can_kill_an_app_connection(server):
    import MySQLdb

    app = MySQLdb.connect(**dsnlib.parse(server.dsn_tcp))
    try:
        cur = app.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        (conn_id,), = cur.fetchall()
        admin = server.admin_connect()
        try:
            acur = admin.cursor()
            acur.execute("SELECT CURRENT_USER()")
            assert acur.fetchone()[0].startswith(server.admin_user + "@")
            acur.execute("KILL %d" % conn_id)
        finally:
            admin.close()
        with pytest.raises(MySQLdb.OperationalError):
            cur.execute("SELECT 1")
    finally:
        try:
            app.close()
        except Exception:
            pass


def test_general_log_records_quit_of_a_closed_connection(server):
    import MySQLdb

    since = server.general_log_size()
    conn = MySQLdb.connect(**dsnlib.parse(server.dsn_socket))
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    (conn_id,), = cur.fetchall()
    conn.close()
    assert wait_until(lambda: (conn_id, "Quit", "") in server.general_log(since), 5)


def test_password_is_random_and_dsns_have_the_documented_shape(server):
    assert len(server.password) >= 16
    assert server.dsn_tcp == "mysql://tq_app:%s@127.0.0.1:%d/tq" % (server.password, server.port)
    assert server.dsn_socket == "mysql://tq_app:%s@localhost/tq?unix_socket=%s" % (
        server.password, server.socket_path)
    assert server.password not in repr(server)


def test_stop_leaves_no_process_and_no_directory(server_factory):
    s = server_factory()
    tmpdir, pid, supervisor = s.tmpdir, s.pid, s._supervisor
    assert processes_mentioning(tmpdir)  # the server and its supervisor
    assert query(s.dsn_socket, "SELECT count(*) FROM users") == ((100,),)
    s.stop()
    assert not os.path.exists(tmpdir)
    assert processes_mentioning(tmpdir) == []
    assert not os.path.exists("/proc/%d" % pid)  # reaped, not a zombie
    assert supervisor.poll() is not None
    s.stop()  # idempotent


OWNER = r"""
import json, sys, time
from trace_quit.workloads.server import DisposableServer
s = DisposableServer().start()
print(json.dumps({"tmpdir": s.tmpdir, "pid": s.pid, "dsn": s.dsn_socket}), flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_owner_leaves_no_process_and_no_directory(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             cwd=str(tmp_path))
    try:
        info = json.loads(owner.stdout.readline())
        assert query(info["dsn"], "SELECT count(*) FROM users") == ((100,),)
        assert info["pid"] in processes_mentioning(info["tmpdir"])
    finally:
        owner.kill()  # SIGKILL: no Python code of the owner runs
        owner.wait()
    assert owner.returncode == -signal.SIGKILL
    assert wait_until(lambda: not processes_mentioning(info["tmpdir"]) and not os.path.exists(info["tmpdir"]), 20), \
        "left behind: %s %s" % (processes_mentioning(info["tmpdir"]), os.path.exists(info["tmpdir"]))


def test_foreground_command_prints_redacted_dsns_and_cleans_up_on_ctrl_c(tmp_path):
    dsn_file = tmp_path / "dsn"
    proc = subprocess.Popen([sys.executable, "-m", "trace_quit.workloads.server", "--dsn-file", str(dsn_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        out = "".join(lines)
        dsn = dsn_file.read_text().strip()
        password = dsnlib.parse(dsn)["password"]
        assert password and password not in out
        assert dsnlib.redact(dsn) in out
        assert stat.S_IMODE(os.stat(str(dsn_file)).st_mode) == 0o600
        assert query(dsn, "SELECT count(*) FROM users") == ((100,),)
        tmpdir = out.split("(pid ")[1].split(", ", 1)[1].split(")")[0]
        assert os.path.isdir(tmpdir)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + rest
    assert not os.path.exists(tmpdir)
    assert processes_mentioning(tmpdir) == []
    assert not dsn_file.exists()


def test_plain_unless_tls_is_configured(server):
    """MariaDB 11.4+ (Debian 13's 11.8) offers TLS with a certificate of its own, and PyMySQL 1.2
    takes it unasked (PREFERRED): every wire would be encrypted. The disposable server runs with
    --skip-ssl unless given --ssl-* options (the TLS tests: tests/system/test_bpf_tls.py)."""
    import MySQLdb
    import pymysql

    for connect in (MySQLdb.connect, pymysql.connect):
        for dsn in (server.dsn_tcp, server.dsn_socket):
            conn = connect(**dsnlib.parse(dsn))
            try:
                cur = conn.cursor()
                cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
                assert cur.fetchone()[1] in ("", b""), (connect.__module__, dsn)
            finally:
                conn.close()
