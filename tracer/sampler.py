"""The server-side sampler: how many connections does the server see for a user, over time.

The study's shell loop, as a library: every ``interval`` seconds (0.1 by default) it runs

    SELECT COUNT(*) FROM information_schema.PROCESSLIST
     WHERE USER = %s AND ID <> CONNECTION_ID()

on a connection of its own and calls ``sink(t_ns, count)`` with ``t_ns`` in
CLOCK_MONOTONIC nanoseconds (``events.now_ns``, the one clock of every trace-quit source;
the midpoint of the query's round trip). The ``ID <> CONNECTION_ID()`` term excludes the
sampler's own connection, so it may connect as the very user it counts (the ``--dsn`` a
user gives the tracer); connecting as an administrator works as well. An account without
the PROCESS privilege sees only its own threads, per user@host (tq_app@127.0.0.1 does not
see tq_app@localhost): to count everything, connect as an account that has it (the
disposable server's tq_app and its administrator do).

It runs in a daemon thread (``start()``/``stop()``) and never raises out: a failed
connect or query is counted in ``errors`` (``last_error`` keeps the message, with no
password), and it reconnects on the next tick. ``sink`` exceptions are counted the same
way. The tracer wraps each call into a ``{"k": "server_count", "src": "sampler", ...}``
event; ``CsvSink`` writes ``t_s,count`` lines as the workloads' ``--sample-csv`` does.

    python -m trace_quit.tracer.sampler --dsn mysql://u:p@127.0.0.1:3306/db [--csv FILE]

Stdlib + mysqlclient (imported in the thread, so importing this module never needs it).
"""

import argparse
import sys
import threading

from trace_quit.tracer import events as ev
from trace_quit.tracer import dsn as dsnlib

QUERY = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
         "WHERE USER = %s AND ID <> CONNECTION_ID()")
#: The server's count of connections that ended without COM_QUIT (and of failed connects).
STATUS_QUERY = "SHOW GLOBAL STATUS WHERE Variable_name IN ('Aborted_clients', 'Aborted_connects')"


class MissingGrant(Exception):
    """The sampler's account cannot see other accounts' connections."""


class Sampler:
    """Polls the PROCESSLIST count of ``user`` (default: the DSN's user) every ``interval`` s."""

    def __init__(self, dsn, sink, user=None, interval=0.1, connect_timeout=5, on_first_error=None,
                 status_sink=None, on_scope=None):
        self._params = dsnlib.parse(dsn)
        self._params["connect_timeout"] = int(max(1, connect_timeout))
        self._redacted = dsnlib.redact(dsn)
        self.user = user if user is not None else self._params["user"]
        self.interval = float(interval)
        self.sink = sink
        self.samples = 0
        self.errors = 0
        self.last_error = None
        self.first_error = None
        #: called once, from the sampler's thread, with the first error's one-line text
        self.on_first_error = on_first_error
        self._stop = threading.Event()
        self._thread = None
        self._conn = None
        # Aborted_clients before and after (issue 19): status_sink(t_ns, {"aborted_clients": n, ...}).
        self.status_sink = status_sink
        self.status_first = None
        self.status_last = None
        self._first_done = threading.Event()
        #: "all" (PROCESS: every user's threads), "own" (no PROCESS: the DSN user's own
        #: threads, which is what is counted), None before the first connect
        self.scope = None
        #: called once with a sentence when the count covers only the account's own connections
        self.on_scope = on_scope

    def start(self):
        """Start polling in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trace-quit-sampler", daemon=True)
            self._thread.start()
            if self.status_sink is not None:
                # The first Aborted_clients reading precedes the program's first connection.
                self._first_done.wait(min(self._params["connect_timeout"] + 1, 3))
        return self

    def stop(self, timeout=5.0):
        """Stop polling and close the sampler's connection; returns the number of samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.samples

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the thread -------------------------------------------------------------------
    def _error(self, what, exc):
        self.errors += 1
        self.last_error = "%s: %s" % (what, ev.redact(str(exc)))
        if self.first_error is None:
            self.first_error = self.last_error
            if self.on_first_error is not None:
                try:
                    self.on_first_error(self.first_error)
                except Exception:
                    pass

    def _close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _poll(self, MySQLdb):
        if self._conn is None:
            self._conn = MySQLdb.connect(autocommit=True, **self._params)
            self._check_grant()
        cur = self._conn.cursor()
        try:
            t0 = ev.now_ns()
            cur.execute(QUERY, (self.user,))
            row = cur.fetchone()
            t1 = ev.now_ns()
        finally:
            cur.close()
        return (t0 + t1) // 2, int(row[0])

    def _check_grant(self):
        """Without PROCESS an account sees only the threads of its own user name.

        That is exactly what counting this account's connections needs (most applications
        run with such an account): sample on, and ``scope`` says what the count covers. Any
        other user's count would be a silent 0: refused (tests/integration/test_sampler.py)."""
        cur = self._conn.cursor()
        try:
            cur.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'PROCESS'")
            has_process = int(cur.fetchone()[0]) > 0
            cur.execute("SELECT CURRENT_USER()")
            account = str(cur.fetchone()[0])
        finally:
            cur.close()
        if has_process:
            self.scope = "all"
            return
        if self.user != account.rsplit("@", 1)[0]:
            raise MissingGrant("the account %s lacks the PROCESS privilege, so PROCESSLIST shows it only its own "
                               "connections, not %s's: GRANT PROCESS ON *.* TO it, or give --dsn an account "
                               "that has it" % (account, self.user))
        if self.scope is None:
            self.scope = "own"
            if self.on_scope is not None:
                try:
                    self.on_scope("the account %s has no PROCESS privilege: the server count covers the "
                                  "connections of user %s only (what this account may see)" % (account, self.user))
                except Exception:
                    pass

    def _run(self):
        try:
            import MySQLdb
        except Exception as exc:  # no mysqlclient here: say so, poll nothing
            self._error("import MySQLdb", exc)
            self._first_done.set()
            return
        interval_ns = int(self.interval * 1e9)
        next_ns = ev.now_ns()
        try:
            while not self._stop.is_set():
                try:
                    t, count = self._poll(MySQLdb)
                except MissingGrant as exc:  # no retry can fix it: say it once and stop
                    self._error("query on %s" % self._redacted, exc)
                    return
                except Exception as exc:
                    self._error("query on %s" % self._redacted, exc)
                    self._close()
                else:
                    self.samples += 1
                    try:
                        self.sink(t, count)
                    except Exception as exc:
                        self._error("sink", exc)
                    if self.status_sink is not None and self.status_first is None:
                        self._status(first=True)
                self._first_done.set()
                # Fixed rate: the next tick is one interval after the previous one, not
                # after this query; a late tick is skipped rather than bunched.
                next_ns += interval_ns
                now = ev.now_ns()
                if next_ns < now:
                    next_ns = now + interval_ns - (now - next_ns) % interval_ns
                self._stop.wait((next_ns - now) / 1e9)
        except BaseException as exc:  # never raise out of the thread
            self._error("sampler", exc)
        finally:
            if self.status_sink is not None and self.status_first is not None:
                self._status(first=False)
            self._close()

    # --- Aborted_clients (issue 19; docs/pymysql.md) ---------------------------------------
    def read_status(self):
        """``{"aborted_clients": n, "aborted_connects": n}`` from SHOW GLOBAL STATUS."""
        cur = self._conn.cursor()
        try:
            cur.execute(STATUS_QUERY)
            rows = cur.fetchall()
        finally:
            cur.close()
        return {str(name).lower(): int(value) for name, value in rows}

    def _status(self, first):
        """Read the counters once at the start; at the end, until they stop moving.

        The server counts an aborted client when its thread reads the closed socket, a moment
        after the program's close(): the last reading waits for two equal ones (<= 3 s)."""
        try:
            if self._conn is None:
                import MySQLdb

                self._conn = MySQLdb.connect(autocommit=True, **self._params)
            status = self.read_status()
            if not first:
                deadline = ev.now_ns() + 3 * 10 ** 9
                while ev.now_ns() < deadline:
                    threading.Event().wait(0.2)
                    again = self.read_status()
                    if again == status:
                        break
                    status = again
            t = ev.now_ns()
            if first:
                self.status_first = status
            else:
                self.status_last = status
            self.status_sink(t, dict(status, at="start" if first else "end"))
        except Exception as exc:
            self._error("SHOW GLOBAL STATUS on %s" % self._redacted, exc)


class CsvSink:
    """A sink writing ``t_s,count`` lines (seconds since ``t0_ns``), flushed every line."""

    def __init__(self, path, t0_ns=None):
        self.t0_ns = ev.now_ns() if t0_ns is None else t0_ns
        self._f = open(path, "w")
        self._f.write("t_s,count\n")
        self._f.flush()
        self._lock = threading.Lock()
        self.max_count = None
        self.last_count = None

    def __call__(self, t_ns, count):
        with self._lock:
            if self._f is None:
                return
            self._f.write("%.3f,%d\n" % ((t_ns - self.t0_ns) / 1e9, count))
            self._f.flush()
            self.last_count = count
            self.max_count = count if self.max_count is None else max(self.max_count, count)

    def close(self):
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def main(argv=None):
    import time

    parser = argparse.ArgumentParser(
        prog="python -m trace_quit.tracer.sampler",
        description="Print (or write as CSV) the server's connection count for a user every "
                    "interval, until Ctrl-C.")
    parser.add_argument("--dsn", required=True, help="mysql://user:password@host:port/db[?unix_socket=...]")
    parser.add_argument("--user", help="the user whose connections to count (default: the DSN's user)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between polls (0.1)")
    parser.add_argument("--csv", metavar="FILE", help="write t_s,count to FILE instead of stdout")
    args = parser.parse_args(argv)
    sink = CsvSink(args.csv or "/dev/stdout")
    sampler = Sampler(args.dsn, sink, user=args.user, interval=args.interval).start()
    last_errors = 0
    try:
        while True:
            time.sleep(0.5)
            if sampler.errors != last_errors:
                last_errors = sampler.errors
                sys.stderr.write("sampler: %s\n" % sampler.last_error)
    except KeyboardInterrupt:
        pass
    finally:
        sampler.stop()
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
