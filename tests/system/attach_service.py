"""A threaded HTTP service with an engine-per-request bug, run untraced (tests/system/test_attach.py).

    python attach_service.py DSN PORT_FILE [SOCKET_DSN]

GET /leak   a new Engine per request (the bug): its connection is closed by the GC, later
GET /ok     the shared Engine's pool (no COM_QUIT)
GET /leak3  three /leak, then gc.collect() (tests/system/test_attach_stress.py)
GET /collect  gc.collect() (the test ends its window with every leaked Engine collected)
GET /churn  (SOCKET_DSN) a new Engine per request, NullPool, closed and disposed: its threads
            are mostly inside _mysql.connect(), a query or close() (tests/system/test_attach_stress.py)
GET /raw    (SOCKET_DSN) MySQLdb.connect(), SELECT 1, close(): no SQLAlchemy in between
GET /pymysql  (SOCKET_DSN) the same with PyMySQL
GET /gap    the longest stall (ms) a 1 ms heartbeat thread saw since the last /gap: the
            stop-the-world time of an injection, as the program itself feels it
"""

import gc
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import create_engine, text

URL = sys.argv[1].replace("mysql://", "mysql+mysqldb://", 1)
SHARED = create_engine(URL, pool_size=4, max_overflow=4)
SOCKET_URL = sys.argv[3].replace("mysql://", "mysql+mysqldb://", 1) if len(sys.argv) > 3 else None


def churn():
    from sqlalchemy.pool import NullPool

    engine = create_engine(SOCKET_URL, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()
    finally:
        engine.dispose()


def raw(driver):
    from sqlalchemy.engine import make_url

    url = make_url(SOCKET_URL)
    kw = dict(user=url.username, password=url.password, database=url.database,
              unix_socket=url.query["unix_socket"])
    if driver == "pymysql":
        import pymysql

        conn = pymysql.connect(**kw)
    else:
        import MySQLdb

        conn = MySQLdb.connect(**kw)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        return cur.fetchone()[0]
    finally:
        conn.close()


def leaky_query():
    engine = create_engine(URL)  # LEAK-SITE: a new Engine and pool on every request
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar()


def shared_query():
    with SHARED.connect() as conn:
        return conn.execute(text("SELECT 2")).scalar()


class Heartbeat:
    def __init__(self):
        self.lock = threading.Lock()
        self.max_gap = 0.0

    def run(self):
        last = time.monotonic()
        while True:
            time.sleep(0.001)
            now = time.monotonic()
            with self.lock:
                self.max_gap = max(self.max_gap, now - last)
            last = now

    def take(self):
        with self.lock:
            gap, self.max_gap = self.max_gap, 0.0
        return gap


HEARTBEAT = Heartbeat()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/leak":
            body = str(leaky_query())
        elif self.path == "/ok":
            body = str(shared_query())
        elif self.path == "/churn":
            body = str(churn())
        elif self.path in ("/raw", "/pymysql"):
            body = str(raw(self.path[1:]))
        elif self.path == "/leak3":  # three leaks and the collection that ends them, in one request
            body = str(sum(leaky_query() for _ in range(3)) + 0 * gc.collect())
        elif self.path == "/collect":
            body = str(gc.collect())
        elif self.path == "/gap":
            body = "%.3f" % (HEARTBEAT.take() * 1000)
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=HEARTBEAT.run, name="heartbeat", daemon=True).start()
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
