"""A disposable MariaDB/MySQL server: private data directory, own socket, free loopback port.

    with DisposableServer() as server:
        engine = create_engine(dsn.sqlalchemy_url(server.dsn_tcp))
        ...

What it does, in order (about 0.5 s for MariaDB on a 2-vCPU VM):

1. ``mkdtemp`` a private directory (mode 0700) under ``$TQ_SERVER_TMPDIR`` or the system
   temporary directory, and start a *supervisor*: a tiny ``python -I`` process that reads a
   pipe whose write end only this process holds. When the pipe reaches EOF (``stop()``, a
   normal exit, a crash or SIGKILL of the owner) it kills the server it was told about and
   ``rm -rf``'s the directory. This is what makes the server disposable even when its owner
   dies without running any Python code.
2. Initialise a data directory there: ``mariadb-install-db --no-defaults`` (or
   ``mysqld --initialize-insecure`` for Oracle MySQL 8).
3. Start ``mariadbd``/``mysqld`` with ``--no-defaults`` (no system my.cnf, so never the system
   data directory or port 3306) on a Unix socket in that directory and a free port on
   127.0.0.1, with the general query log on (``general_log_path``: tests read its ``Quit``
   lines), and an ``--init-file`` that creates database ``tq``, user ``tq_app`` (a random
   password per server, never printed: DSNs are printed redacted; the PROCESS privilege, so
   a sampler connected as tq_app sees all of tq_app's connections) and table ``users``
   with 100 rows. The server only reports "ready for connections" after the init file ran, so no
   client connection is made to set it up (nothing that would show up in a trace).

As root, the server runs with ``--user=root`` (its files stay in the private directory).
The administrative account is the OS user over the socket (MariaDB ``unix_socket``
authentication) or ``root`` with no password (MySQL ``--initialize-insecure``):
``admin_dsn`` / ``admin_connect()``.

``python -m trace_quit.workloads.server`` starts one in the foreground, prints its redacted
DSNs and the path of a 0600 file holding the full ones, and stops it on Ctrl-C.
Stdlib only (``admin_connect`` imports MySQLdb when called); Python 3.8+.
"""

import argparse
import atexit
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from trace_quit.workloads import dsn as dsnlib
from trace_quit.workloads.general_log import parse_general_log  # noqa: F401 (server.parse_general_log)

DATABASE = "tq"
APP_USER = "tq_app"
USERS_ROWS = 100

#: Seconds to wait for "ready for connections" (MySQL 8's --initialize is the slow part).
START_TIMEOUT_S = 90.0
#: Seconds a server gets to shut down on SIGTERM before it is SIGKILLed.
STOP_TIMEOUT_S = 10.0

#: Unix socket paths are limited to 107 bytes; keep ours well below.
_MAX_SOCKET_PATH = 100

#: The supervisor script (run by path with ``python -I``): workloads/supervisor.py.
SUPERVISOR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")


class ServerError(RuntimeError):
    """The disposable server could not be set up; the message says why and what to do."""


def _which(name, extra_dirs=("/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/bin")):
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def _flavor_version(line):
    """``("mariadb"|"mysql", "10.11.19-MariaDB-0+deb12u1")`` from a ``--version`` line."""
    m = re.search(r"\bVer\s+(\S+)", line)
    version = m.group(1) if m else line.strip()
    return ("mariadb" if "mariadb" in line.lower() else "mysql"), version


def find_server_binary():
    """``(path, flavor, version)`` of the installed server: MariaDB first, then MySQL.

    ``$TQ_MYSQLD`` overrides the search. ``flavor`` is ``"mariadb"`` or ``"mysql"``.
    """
    candidates = [os.environ["TQ_MYSQLD"]] if os.environ.get("TQ_MYSQLD") else []
    candidates += [p for p in (_which("mariadbd"), _which("mysqld")) if p]
    for path in candidates:
        try:
            out = subprocess.run([path, "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        line = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        return (path,) + _flavor_version(line)
    raise ServerError(
        "no MariaDB or MySQL server binary (mariadbd or mysqld) was found: "
        "run scripts/setup.sh (it installs mariadb-server), or set TQ_MYSQLD=/path/to/mysqld")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (never 3306)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 3306:
            return port


def _base_tmpdir():
    base = os.environ.get("TQ_SERVER_TMPDIR") or tempfile.gettempdir()
    # mkdtemp adds ~25 characters and the socket name ~12: fall back to /tmp for long paths.
    if len(base) + 40 > _MAX_SOCKET_PATH:
        base = "/tmp"
    return base


def _init_sql(password):
    """The --init-file: one statement per line (the server's init-file parser wants that)."""
    pw = password.replace("\\", "\\\\").replace("'", "\\'")
    rows = ",".join("(%d,'user%d','user%d@example.com')" % (i, i, i)
                    for i in range(1, USERS_ROWS + 1))
    lines = ["CREATE DATABASE IF NOT EXISTS %s;" % DATABASE]
    # Both host forms: with --skip-name-resolve, socket clients are 'localhost' and TCP
    # clients '127.0.0.1' (and an anonymous ''@'localhost' would shadow a '%' account).
    for host in ("localhost", "127.0.0.1"):
        lines.append("CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY '%s';" % (APP_USER, host, pw))
        lines.append("GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%s';" % (DATABASE, APP_USER, host))
        # PROCESS: without it an account sees only its own threads in PROCESSLIST (per
        # user@host), so a sampler connected as tq_app over TCP would miss socket clients.
        lines.append("GRANT PROCESS ON *.* TO '%s'@'%s';" % (APP_USER, host))
    lines.append("CREATE TABLE IF NOT EXISTS %s.users (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
                 "email VARCHAR(128) NOT NULL);" % DATABASE)
    lines.append("INSERT INTO %s.users (id, name, email) VALUES %s;" % (DATABASE, rows))
    return "\n".join(lines) + "\n"


class DisposableServer:
    """A private MariaDB/MySQL server; a context manager, or ``start()``/``stop()``.

    Attributes once started: ``flavor``, ``version``, ``port``, ``socket_path``, ``tmpdir``,
    ``datadir``, ``general_log_path``, ``error_log_path``, ``pid``, ``user``, ``password``,
    ``database``; DSNs ``dsn_tcp``, ``dsn_socket`` (the app user) and ``admin_dsn``.
    """

    def __init__(self, binary=None, max_connections=2000, extra_args=()):
        self._binary = binary
        self.max_connections = max_connections
        self.extra_args = list(extra_args)
        self.flavor = self.version = self.binary = None
        self.tmpdir = self.datadir = self.socket_path = None
        self.general_log_path = self.error_log_path = None
        self.port = None
        self.user = APP_USER
        self.database = DATABASE
        self.password = None
        self._proc = None
        self._supervisor = None
        self._init_file = None
        self._atexit = False

    # --- life cycle -----------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def start(self):
        if self._proc is not None:
            raise ServerError("this DisposableServer is already started")
        if self._binary:
            self.binary = self._binary
            self.flavor, self.version = self._probe(self._binary)
        else:
            self.binary, self.flavor, self.version = find_server_binary()
        self.password = secrets.token_hex(12)
        self.tmpdir = tempfile.mkdtemp(prefix="trace-quit-db-", dir=_base_tmpdir())
        self._start_supervisor()
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self.datadir = os.path.join(self.tmpdir, "data")
            self.socket_path = os.path.join(self.tmpdir, "mysqld.sock")
            self.general_log_path = os.path.join(self.tmpdir, "general.log")
            self.error_log_path = os.path.join(self.tmpdir, "error.log")
            self._init_file = os.path.join(self.tmpdir, "init.sql")
            fd = os.open(self._init_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_init_sql(self.password))
            self._initialize()
            self._launch()
        except BaseException:
            self.stop()
            raise
        finally:
            if self._init_file and os.path.exists(self._init_file):
                os.unlink(self._init_file)  # it holds the password
        return self

    def stop(self):
        """Stop the server and remove its directory. Idempotent; never raises for a dead server."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            try:
                sup.stdin.close()
            except OSError:
                pass
            try:
                sup.wait(STOP_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()

    # --- internals --------------------------------------------------------------------
    @staticmethod
    def _probe(path):
        out = subprocess.run([path, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30).stdout.decode("utf-8", "replace")
        return _flavor_version((out.strip().splitlines() or [""])[-1])

    def _start_supervisor(self):
        self._supervisor = subprocess.Popen(
            [sys.executable, "-I", SUPERVISOR_PATH, self.tmpdir, repr(STOP_TIMEOUT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)

    def _register(self, pid):
        self._supervisor.stdin.write(b"pid %d\n" % pid)
        self._supervisor.stdin.flush()

    def _user_args(self):
        return ["--user=root"] if os.geteuid() == 0 else []

    def _run_logged(self, argv, what):
        log = os.path.join(self.tmpdir, "install.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
            self._register(proc.pid)
            try:
                rc = proc.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timeout"
        if rc != 0:
            raise ServerError("%s failed (%s): %s" % (what, rc, self._tail(log)))

    def _initialize(self):
        if self.flavor == "mariadb":
            install = _which("mariadb-install-db") or _which("mysql_install_db")
            if not install:
                raise ServerError("mariadb-install-db was not found: run scripts/setup.sh (mariadb-server)")
            argv = [install, "--no-defaults", "--datadir=" + self.datadir,
                    "--auth-root-authentication-method=socket", "--skip-test-db",
                    "--skip-name-resolve", "--innodb-log-file-size=16M"] + self._user_args()
            self._run_logged(argv, "mariadb-install-db")
        else:
            argv = [self.binary, "--no-defaults", "--initialize-insecure", "--datadir=" + self.datadir,
                    "--log-error=" + os.path.join(self.tmpdir, "initialize.log"),
                    "--loose-innodb-redo-log-capacity=16M"] + self._user_args()
            try:
                self._run_logged(argv, "mysqld --initialize-insecure")
            except ServerError:
                raise ServerError("mysqld --initialize-insecure failed: %s"
                                  % self._tail(os.path.join(self.tmpdir, "initialize.log")))

    def _server_argv(self, port):
        argv = [self.binary, "--no-defaults",
                "--datadir=" + self.datadir,
                "--socket=" + self.socket_path,
                "--port=%d" % port,
                "--bind-address=127.0.0.1",
                "--pid-file=" + os.path.join(self.tmpdir, "mysqld.pid"),
                "--log-error=" + self.error_log_path,
                "--general-log=1",
                "--general-log-file=" + self.general_log_path,
                "--log-output=FILE",
                "--init-file=" + self._init_file,
                "--tmpdir=" + self.tmpdir,
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=%d" % self.max_connections,
                "--innodb-buffer-pool-size=32M"]
        if self.flavor == "mariadb":
            argv += ["--innodb-log-file-size=16M"]
            # MariaDB 11.4+ (Debian 13's 11.8) makes a certificate of its own and offers TLS,
            # and PyMySQL 1.2 and the mariadb client take it unasked: the wire of every
            # connection would be encrypted. Plain unless the caller configures TLS
            # (tests/integration/test_server.py pins it; the TLS tests pass --ssl-cert/--ssl-key).
            if not any(a.startswith(("--ssl", "--skip-ssl", "--loose-ssl")) for a in self.extra_args):
                argv += ["--skip-ssl"]
        else:
            # Oracle MySQL 8: no X Protocol listener (it would take port 33060 and a socket in
            # /var/run/mysqld), and a secure_file_priv directory of our own.
            files = os.path.join(self.tmpdir, "files")
            os.makedirs(files, exist_ok=True)
            argv += ["--mysqlx=OFF", "--secure-file-priv=" + files, "--loose-innodb-redo-log-capacity=16M"]
        return argv + self._user_args() + self.extra_args

    def _launch(self):
        for attempt in range(5):
            port = free_port()
            log_start = os.path.getsize(self.error_log_path) if os.path.exists(self.error_log_path) else 0
            proc = subprocess.Popen(self._server_argv(port), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
            self._register(proc.pid)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                log = self._read_log(log_start)
                if "ready for connections" in log and os.path.exists(self.socket_path):
                    self._proc, self.port = proc, port
                    return
                if proc.poll() is not None:
                    if re.search(r"Address already in use|Can't start server: Bind", log) and attempt < 4:
                        break  # lost the race for the port: try another
                    raise ServerError("%s exited with status %s while starting: %s"
                                      % (os.path.basename(self.binary), proc.returncode, self._tail_text(log)))
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise ServerError("%s was not ready after %.0f s: %s"
                                      % (os.path.basename(self.binary), START_TIMEOUT_S, self._tail_text(log)))
                time.sleep(0.02)
        raise ServerError("no free port could be bound after 5 attempts")

    def _read_log(self, start):
        try:
            with open(self.error_log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _tail_text(text, n=8):
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-n:]) or "(no output)"

    def _tail(self, path, n=8):
        try:
            with open(path, "rb") as f:
                return self._tail_text(f.read().decode("utf-8", "replace"), n)
        except OSError:
            return "(no log)"

    # --- what users of the server need -----------------------------------------------
    def _need_started(self):
        if self.port is None:
            raise ServerError("the DisposableServer is not started")

    @property
    def dsn_tcp(self):
        """``mysql://tq_app:PASSWORD@127.0.0.1:PORT/tq`` (print it with ``dsn.redact``)."""
        self._need_started()
        return "mysql://%s:%s@127.0.0.1:%d/%s" % (self.user, self.password, self.port, self.database)

    @property
    def dsn_socket(self):
        """``mysql://tq_app:PASSWORD@localhost/tq?unix_socket=/path`` (the Unix socket)."""
        self._need_started()
        return "mysql://%s:%s@localhost/%s?unix_socket=%s" % (
            self.user, self.password, self.database, self.socket_path)

    @property
    def admin_user(self):
        if self.flavor == "mysql":
            return "root"
        return "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def admin_dsn(self):
        """The administrative account over the socket (no password: socket authentication)."""
        self._need_started()
        return "mysql://%s@localhost/?unix_socket=%s" % (self.admin_user, self.socket_path)

    def admin_connect(self, **kwargs):
        """A MySQLdb connection as the administrator over the socket (KILL, SET GLOBAL, ...)."""
        import MySQLdb

        self._need_started()
        params = dict(unix_socket=self.socket_path, user=self.admin_user)
        params.update(kwargs)
        return MySQLdb.connect(**params)

    def general_log_size(self):
        """The general log's current size: pass it to ``general_log`` to read only later entries."""
        try:
            return os.path.getsize(self.general_log_path)
        except OSError:
            return 0

    def general_log(self, since=0):
        """``[(connection_id, command, argument)]`` from the general log, from byte ``since``."""
        try:
            with open(self.general_log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return parse_general_log(text)

    def __repr__(self):
        if self.port is None:
            return "<DisposableServer (not started)>"
        return "<DisposableServer %s pid=%s %s>" % (self.flavor, self.pid, dsnlib.redact(self.dsn_tcp))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trace_quit.workloads.server",
        description="Start a disposable MariaDB/MySQL server in the foreground; Ctrl-C stops it "
                    "and removes everything.")
    parser.add_argument("--dsn-file", metavar="FILE",
                        help="also write the full TCP DSN (with its password) to FILE, mode 0600")
    args = parser.parse_args(argv)
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = DisposableServer().start()
    except ServerError as e:
        sys.stderr.write("server: %s\n" % e)
        return 1
    try:
        secret = os.path.join(server.tmpdir, "dsn")
        paths = [secret] + ([args.dsn_file] if args.dsn_file else [])
        for path in paths:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(server.dsn_tcp + "\n" + (server.dsn_socket + "\n" if path == secret else ""))
        print("disposable server: %s (pid %d, %s)" % (server.version, server.pid, server.tmpdir))
        print("  tcp:         %s" % dsnlib.redact(server.dsn_tcp))
        print("  socket:      %s" % dsnlib.redact(server.dsn_socket))
        print("  admin:       %s" % server.admin_dsn)
        print("  general log: %s" % server.general_log_path)
        print("  full DSNs (with the password) are in %s (mode 0600)%s"
              % (secret, "" if not args.dsn_file else "; TCP DSN also in " + args.dsn_file))
        print("Ctrl-C stops it and removes everything.")
        sys.stdout.flush()
        while not stop and server.running:
            time.sleep(0.5)
        if not server.running and not stop:
            sys.stderr.write("server: the server exited on its own: %s\n" % server._tail(server.error_log_path))
            return 1
        return 0
    finally:
        server.stop()
        if args.dsn_file:
            try:
                os.unlink(args.dsn_file)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
