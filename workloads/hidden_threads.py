"""hidden-threads: the incident's shape -- subscriber clients whose callbacks run on threads you did not start.

The incident's service consumed a queue through a pub/sub client configured with "1
worker", yet its callbacks ran on several threads: such clients run a consumer thread, a
lease-maintainer, a heartbeater and a callback thread pool behind the scenes. This workload
runs ``--subscribers`` such clients (2 by default) in one process. Each has:

- ``Thread-ConsumeStream-K``: takes messages off the subscriber's queue and hands them to
- ``ThreadPoolExecutor-ThreadScheduler-K_*``: the callback pool (``--workers`` threads each,
  10 by default, so 20 callbacks in flight as in the study), which runs the user callback:
  process the message (sleep ``--task-seconds``), then the study's database work with a
  ``get_db_session()`` that calls ``create_engine(url, pool_recycle=10)`` on every call;
- ``Thread-LeaseMaintainer-K`` and ``Thread-Heartbeater-K``: wake every 100 ms / 500 ms and
  do a little bookkeeping (they allocate, so the cyclic garbage collector can start on them).

The main thread publishes ``--tasks`` messages round-robin and waits until all are acked.

Expected: the same leak as engine-per-call -- the connection count climbs well past any
"workers x pool" estimate in a saw-tooth with a later large drop -- but the collections
that destroy connections run on whichever thread happened to allocate at the time,
including threads that never touched the database (lease-maintainer, heartbeater,
consumer): the thread that sends a COM_QUIT is often not the thread that opened it.

    python -m trace_quit.workloads hidden-threads [--dsn DSN] [--subscribers 2 --workers 10]
"""

import collections
import concurrent.futures
import queue
import sys
import threading
import time

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from trace_quit.workloads import harness

URL = None
POOL_RECYCLE = harness.POOL_RECYCLE
POOL_OPTIONS = {}
_STATS = {"max_threads": 0}


def add_arguments(parser):
    parser.add_argument("--subscribers", type=int, default=2,
                        help="subscriber clients in the process (2); --workers is per subscriber")
    parser.set_defaults(workers=10)


def configure(url, args):
    global URL, POOL_RECYCLE, POOL_OPTIONS
    URL = url
    POOL_OPTIONS = harness.pool_options(args)
    POOL_RECYCLE = POOL_OPTIONS.pop("pool_recycle")


def get_db_session():
    engine = create_engine(URL, pool_recycle=POOL_RECYCLE, **POOL_OPTIONS)  # a new Engine and QueuePool on every call
    return sessionmaker(bind=engine)()


class Message:
    def __init__(self, subscriber, seconds, user_id):
        self.subscriber = subscriber
        self.seconds = seconds
        self.user_id = user_id

    def ack(self):
        self.subscriber.ack(self)


class Subscriber:
    """A pub/sub-like client: its threads, its callback pool, its lease bookkeeping."""

    def __init__(self, k, workers, callback):
        self.k = k
        self.callback = callback
        self.messages = queue.Queue()
        self.leases = {}
        self.beats = collections.deque(maxlen=16)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.scheduler = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ThreadPoolExecutor-ThreadScheduler-%d" % k)
        self.threads = [
            threading.Thread(target=self._consume, name="Thread-ConsumeStream-%d" % k, daemon=True),
            threading.Thread(target=self._maintain_leases, name="Thread-LeaseMaintainer-%d" % k, daemon=True),
            threading.Thread(target=self._heartbeat, name="Thread-Heartbeater-%d" % k, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def deliver(self, seconds, user_id):
        self.messages.put(Message(self, seconds, user_id))

    def ack(self, message):
        with self.lock:
            self.leases.pop(id(message), None)

    def _consume(self):
        while True:
            message = self.messages.get()
            if message is None:
                return
            with self.lock:
                self.leases[id(message)] = {"deadline": time.monotonic() + 60, "attempt": 1}
            self.scheduler.submit(self._run_callback, message)

    def _run_callback(self, message):
        time.sleep(message.seconds)  # processing the message
        self.callback(message)

    def _maintain_leases(self):
        while not self.stopping.wait(0.1):
            with self.lock:
                renewals = [{"ack_id": key, "deadline": lease["deadline"] + 10}
                            for key, lease in self.leases.items()]
            for renewal in renewals:
                renewal["sent"] = time.monotonic()

    def _heartbeat(self):
        while not self.stopping.wait(0.5):
            _STATS["max_threads"] = max(_STATS["max_threads"], threading.active_count())
            self.beats.append({"heartbeat": time.monotonic(), "subscriber": self.k})

    def close(self):
        self.messages.put(None)
        self.scheduler.shutdown(wait=True)
        self.stopping.set()
        for t in self.threads:
            t.join()


def drive(args, plan, work):
    done = threading.Event()
    remaining = [len(plan)]
    lock = threading.Lock()

    def callback(message):  # the user's subscriber callback
        try:
            work(message.user_id)
        finally:
            message.ack()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    subscribers = [Subscriber(k, args.workers, callback) for k in range(args.subscribers)]
    if not plan:
        done.set()
    for i, (seconds, user_id) in enumerate(plan):
        subscribers[i % len(subscribers)].deliver(seconds, user_id)
    done.wait()
    for s in subscribers:
        s.close()


def summary(args):
    return "subscribers=%d max_threads=%d" % (args.subscribers, _STATS["max_threads"])


def main(argv=None):
    return harness.main("hidden-threads", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
