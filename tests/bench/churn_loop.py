"""The measured program: connect, SELECT 1, close, N times; per-phase timings to a JSON file.

Run directly (untraced) or under ``trace-quit`` by ``churn.py``. Stdlib + mysqlclient.
"""

import json
import resource
import sys
import time


def main():
    dsn, iterations, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import MySQLdb
    from trace_quit.workloads import dsn as dsnlib

    kwargs = dsnlib.parse(dsn)
    clock = time.perf_counter_ns
    connect, close, loop = [], [], []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = clock()
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
    wall = clock() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    # This process's own CPU over the loop (user + system; the agent's work is in it, a
    # tracer's is not): steadier than wall time on a shared machine.
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    with open(out, "w") as f:
        json.dump({"connect_ns": connect, "close_ns": close, "loop_ns": loop, "wall_ns": wall,
                   "cpu_ns": int(cpu * 1e9), "total_cpu_ns": int((ru1.ru_utime + ru1.ru_stime) * 1e9),
                   "iterations": iterations}, f)


if __name__ == "__main__":
    main()
