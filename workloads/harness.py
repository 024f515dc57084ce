"""The study's driver, shared by the experiment workloads (docs/causes.md, docs/architecture.md).

A ``ThreadPoolExecutor(max_workers=20)`` runs 500 tasks that each sleep a random 1-3 s;
each future has a done-callback that does the database work:

    session = get_db_session()          # the experiment's own function
    session.begin()
    session.execute(text("SELECT * FROM users WHERE users.id = <random 1..100>"))
    time.sleep(1)                       # hold
    session.commit()                    # never closed, the engine never disposed

An experiment module provides ``get_db_session()`` and ``configure(url, args)``; it may
provide ``add_arguments(parser)`` and ``drive(args, plan, work)`` (a driver of its own,
as hidden-threads does). Everything else is here: the options, the disposable server
when no ``--dsn`` is given, the optional sampler (``--sample-csv``), the random plan
(drawn up front from ``--seed``, so a seed reproduces the tasks' durations and user ids),
and the one-line summary. Stdlib + SQLAlchemy (1.4 or 2.x) + mysqlclient; Python 3.8+.
"""

import argparse
import concurrent.futures
import gc
import random
import sys
import threading
import time

from trace_quit.tracer import events as ev
from trace_quit.workloads import dsn as dsnlib

# The study's defaults.
TASKS = 500
WORKERS = 20
TASK_SECONDS = (1.0, 3.0)
HOLD_SECONDS = 1.0
POOL_RECYCLE = 10
USER_IDS = (1, 100)
#: The interpreter's own GC thresholds, when __main__ changed them before importing the workload.
INTERPRETER_THRESHOLDS = None


class Counter:
    """Thread-safe counts of finished and failed database work."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0
        self.failed = 0
        self.first_error = None
        self.all_done = threading.Event()
        self.expected = 0

    def finish(self, error=None):
        with self.lock:
            if error is None:
                self.done += 1
            else:
                self.failed += 1
                if self.first_error is None:
                    self.first_error = "%s: %s" % (type(error).__name__, ev.redact(str(error)))
            if self.done + self.failed >= self.expected:
                self.all_done.set()


def _nonneg_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, not %s" % text)
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1, not %s" % text)
    return value


def build_parser(name, module):
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(
        prog="python -m trace_quit.workloads " + name,
        description=doc.split("\n\n")[0],
        epilog="Defaults are the incident's: 20 workers, 500 tasks of 1-3 s, 1 s hold, pool_recycle=10.")
    parser.add_argument("--tasks", type=_positive_int, default=TASKS, help="tasks to run (%d)" % TASKS)
    parser.add_argument("--workers", type=_positive_int, default=WORKERS,
                        help="ThreadPoolExecutor max_workers (%d)" % WORKERS)
    parser.add_argument("--task-seconds", type=_nonneg_float, nargs=2, metavar=("MIN", "MAX"),
                        default=list(TASK_SECONDS), help="each task sleeps uniform(MIN, MAX) s (1 3)")
    parser.add_argument("--hold-seconds", type=_nonneg_float, default=HOLD_SECONDS,
                        help="sleep between the SELECT and the commit (%g)" % HOLD_SECONDS)
    parser.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    parser.add_argument("--dsn", help="mysql://user:password@host:port/db[?unix_socket=/path] "
                                      "(default: start a disposable server for the run)")
    parser.add_argument("--pool-size", type=int, help="create_engine pool_size (SQLAlchemy default 5)")
    parser.add_argument("--max-overflow", type=int, help="create_engine max_overflow (SQLAlchemy default 10)")
    parser.add_argument("--pool-recycle", type=int, help="create_engine pool_recycle (%d)" % POOL_RECYCLE)
    study = getattr(module, "GC_THRESHOLD", None)
    parser.add_argument("--gc-threshold", nargs="+", metavar="N",
                        default=[str(n) for n in study] if study else None,
                        help="gc.set_threshold(N [N [N]]) before the run; 'python' keeps the interpreter's own "
                             "(%s)" % ("default: %s, CPython 3.8-3.12's own; 3.13's own are "
                                       "2000 10 10" % " ".join(map(str, study)) if study else "default"))
    parser.add_argument("--sample-csv", metavar="FILE",
                        help="sample the server's connection count for the DSN's user every "
                             "100 ms during the run and write t_s,count to FILE")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return parser


def pool_options(args):
    """The QueuePool keyword arguments for create_engine: the study's, plus any given."""
    opts = {"pool_recycle": POOL_RECYCLE if args.pool_recycle is None else args.pool_recycle}
    if args.pool_size is not None:
        opts["pool_size"] = args.pool_size
    if args.max_overflow is not None:
        opts["max_overflow"] = args.max_overflow
    return opts


def make_plan(args):
    """``[(task_seconds, user_id)]``, drawn up front from the seed."""
    rng = random.Random(args.seed)
    lo, hi = sorted(args.task_seconds)
    return [(rng.uniform(lo, hi), rng.randint(*USER_IDS)) for _ in range(args.tasks)]


def db_work(get_db_session, user_id, hold_seconds):
    """The study's callback body. Nothing is closed or disposed, on purpose."""
    from sqlalchemy import text

    session = get_db_session()
    session.begin()
    session.execute(text("SELECT * FROM users WHERE users.id = %d" % user_id)).fetchall()
    time.sleep(hold_seconds)
    session.commit()


def task(seconds, user_id):
    """What each executor task does: sleep, and hand the user id to the done-callback."""
    time.sleep(seconds)
    return user_id


def study_drive(args, plan, work):
    """The study's driver: 20 workers, the DB work in each future's done-callback."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as executor:
        for seconds, user_id in plan:
            future = executor.submit(task, seconds, user_id)
            future.add_done_callback(lambda f: work(f.result()))


def main(name, module, argv=None):
    parser = build_parser(name, module)
    args = parser.parse_args(argv)
    if hasattr(module, "check_arguments"):
        module.check_arguments(parser, args)
    own_thresholds = INTERPRETER_THRESHOLDS or gc.get_threshold()
    if args.gc_threshold and args.gc_threshold != ["python"]:
        try:
            values = [int(n) for n in args.gc_threshold]
        except ValueError:
            values = []
        if not 1 <= len(values) <= 3 or min(values) < 0:
            parser.error("--gc-threshold takes 1 to 3 numbers >= 0, or 'python'")
        gc.set_threshold(*values)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2 ** 31)

    t0 = ev.now_ns()
    server = None
    dsn = args.dsn
    if dsn is None:
        from trace_quit.workloads.server import DisposableServer, ServerError

        try:
            server = DisposableServer().start()
        except ServerError as e:
            sys.stderr.write("%s: %s\n" % (name, e))
            return 2
        dsn = server.dsn_tcp
        sys.stdout.write("%s: disposable server %s\n" % (name, dsnlib.redact(dsn)))
        sys.stdout.flush()
    try:
        dsnlib.parse(dsn)
    except ValueError as e:
        parser.error(str(e))

    sampler = sink = None
    try:
        if args.sample_csv:
            from trace_quit.tracer.sampler import CsvSink, Sampler

            sink = CsvSink(args.sample_csv, t0_ns=t0)
            # With our own server, sample as its administrator; otherwise as the DSN's user
            # (the sampler excludes its own connection either way).
            sampler = Sampler(server.admin_dsn if server else dsn, sink,
                              user=dsnlib.parse(dsn)["user"]).start()

        module.configure(dsnlib.sqlalchemy_url(dsn), args)
        plan = make_plan(args)
        counter = Counter()
        counter.expected = len(plan)

        def work(user_id):
            try:
                db_work(module.get_db_session, user_id, args.hold_seconds)
            except Exception as exc:
                counter.finish(exc)
            else:
                counter.finish()

        if hasattr(module, "before_run"):
            module.before_run(args)
        drive = getattr(module, "drive", study_drive)
        drive(args, plan, work)
        elapsed = (ev.now_ns() - t0) / 1e9
        extra = module.summary(args) if hasattr(module, "summary") else ""
    finally:
        if sampler is not None:
            sampler.stop()
            sink.close()
        if server is not None:
            server.stop()

    line = "%s: tasks=%d done=%d failed=%d elapsed=%.1fs seed=%d" % (
        name, len(plan), counter.done, counter.failed, elapsed, args.seed)
    if sink is not None:
        line += " samples=%d max_count=%s end_count=%s" % (sampler.samples, sink.max_count, sink.last_count)
        if sampler.errors:
            line += " sampler_errors=%d (%s)" % (sampler.errors, sampler.last_error)
    if extra:
        line += " " + extra
    # Which thresholds the run had: on 3.13 (2000, 10, 10) the study's run looks different.
    line += " gc_threshold=%s" % ",".join(map(str, gc.get_threshold()))
    if gc.get_threshold() != own_thresholds:
        line += " (python's own: %s)" % ",".join(map(str, own_thresholds))
    sys.stdout.write(line + "\n")
    if counter.first_error:
        sys.stdout.write("%s: first error: %s\n" % (name, counter.first_error))
    sys.stdout.flush()
    return 0 if counter.failed == 0 and counter.done == len(plan) else 1
