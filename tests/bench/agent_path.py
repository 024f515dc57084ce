"""Micro-benchmark of the agent's per-connection path, without a server or a tracer.

    .venv/bin/python tests/bench/agent_path.py [--n 2000] [--profile]

Times are this process's CPU (process_time), the fastest of three.

Loads the agent as the bootstrap does, against a FIFO this script drains, and times what a
connection costs the program: the open hook (weak reference, connect parameters, stack),
the close hook (the C chain returned by ``Connection.close``'s lookup, then the event), a
refcount destruction (weakref callback), and the batched writing (encoding + write) per
event. ``--profile`` adds a cProfile breakdown of the same calls (tottime, agent functions).
"""

import argparse
import cProfile
import fcntl
import gc
import importlib.util
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AGENT_DIR = os.path.join(REPO, "tracer", "agent")


def load_agent(fifo):
    spec = importlib.util.spec_from_file_location("_trace_quit_agent", os.path.join(AGENT_DIR, "__init__.py"),
                                                  submodule_search_locations=[AGENT_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_trace_quit_agent"] = module
    spec.loader.exec_module(module)
    from _trace_quit_agent import mysqldb, runtime

    return mysqldb, runtime.start(fifo)


class Conn:
    """Stands in for MySQLdb's Connection: weak-referenceable."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "channel")
        os.mkfifo(fifo, 0o600)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(reader, 1031, 1 << 20)  # F_SETPIPE_SZ: room for a timed run; drained between runs

        def drain():
            try:
                while os.read(reader, 1 << 16):
                    pass
            except BlockingIOError:
                pass

        mysqldb, agent = load_agent(fifo)
        # The same hook as MySQLdb's Connection.close, over a C method (as _mysql's close is).
        hook = mysqldb.CloseHook(agent, object.__sizeof__)
        kwargs = {"host": "127.0.0.1", "user": "app", "port": 3306, "db": "tq", "passwd": "x"}

        def cycle(n):
            for _ in range(n):
                c = Conn()
                agent.on_conn_open(c, (), kwargs)
                hook.__get__(c, Conn)  # lookup only: the chain is built here
                del c

        def opens(n):
            conns = [Conn() for _ in range(n)]
            t0 = time.process_time()
            for c in conns:
                agent.on_conn_open(c, (), kwargs)
            t = time.process_time() - t0
            agent.flush()
            for c in conns:  # close them (no event timing here), keep the registry small
                agent.connections.pop(id(c) + agent.conn_offset, None)
            return t

        def closes(n):
            conns = [Conn() for _ in range(n)]
            for c in conns:
                agent.on_conn_open(c, (), kwargs)
            agent.flush()
            t0 = time.process_time()
            for c in conns:
                hook.__get__(c, Conn)()
            t = time.process_time() - t0
            agent.flush()
            return t

        def destroys(n):
            conns = [Conn() for _ in range(n)]
            for c in conns:
                agent.on_conn_open(c, (), kwargs)
            agent.flush()
            t0 = time.process_time()
            del conns[:]
            t = time.process_time() - t0
            agent.flush()
            return t

        def flushes(n):
            conns = [Conn() for _ in range(n)]
            for c in conns:
                agent.on_conn_open(c, (), kwargs)
            t0 = time.process_time()
            agent.flush()
            return time.process_time() - t0

        n = args.n
        gc.disable()  # the collector's own cost grows with what the benchmark keeps alive: not ours
        agent.last_flush = 1 << 62  # only the explicit flushes below write (measured apart)
        agent.FLUSH_EVENTS = 1 << 30
        for label, fn in (("open hook (queue conn_open with its stack)", opens),
                          ("close hook (lookup chain + queue conn_close)", closes),
                          ("refcount destruction (weakref callback)", destroys),
                          ("write out, per queued conn_open (encode+write)", flushes)):
            fn(1000)  # warm up
            drain()
            best = None
            for _ in range(3):
                t = fn(n)
                agent.flush()
                drain()
                best = t if best is None else min(best, t)
            t = best
            print("%-50s %6.2f µs" % (label, t / n * 1e6))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            cycle(n)
            agent.flush()
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("tottime").print_stats("tracer/agent/|json|functools|operator", 12)
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
