"""The measured program: connect, SELECT 1, close, N times; per-phase timings to a JSON file.

Run directly (untraced) or under ``trace-quit`` by ``churn.py``. Stdlib + mysqlclient.
"""

import json
import sys
import time


def main():
    dsn, iterations, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import MySQLdb
    from trace_quit.workloads import dsn as dsnlib

    kwargs = dsnlib.parse(dsn)
    clock = time.perf_counter_ns
    connect, close, loop = [], [], []
    for _ in range(iterations):
        t0 = clock()
        conn = MySQLdb.connect(**kwargs)
        t1 = clock()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.close()
        t2 = clock()
        conn.close()
        t3 = clock()
        connect.append(t1 - t0)
        close.append(t3 - t2)
        loop.append(t3 - t0)
    with open(out, "w") as f:
        json.dump({"connect_ns": connect, "close_ns": close, "loop_ns": loop}, f)


if __name__ == "__main__":
    main()
