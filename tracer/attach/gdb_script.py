"""Runs inside gdb's Python (``gdb -x``), attached to the target: one bounded injection.

Not imported by trace-quit. Steps: stop at a point where running Python code is safe, take
the GIL, run the bootstrap, give the GIL back, detach. Why each piece:

* the safe point is the entry of ``PyEval_SaveThread``: the thread holds the GIL and is about
  to drop it around a blocking call (``Py_BEGIN_ALLOW_THREADS``), so it holds no allocator or
  interpreter-internal lock, and any other thread could run Python code at this very moment.
  Calling into the interpreter wherever ``attach`` happened to stop it could deadlock (inside
  ``malloc``, holding a lock of the allocator);
* ``PyGILState_Ensure`` there is a no-op that returns "already held"; ``PyRun_SimpleString``
  of a one-line bootstrap that reads the real script from a file;
* ``unwindonsignal``: a signal inside the called code unwinds the call instead of leaving the
  process stopped in the middle of it;
* bounded: a forked watchdog sends the target SIGURG after the timeout. gdb stops on it and
  never passes it on (``nopass``); if gdb itself dies, a SIGURG reaching the program is ignored
  by default. gdb's own Python threads do not run while ``continue`` runs, hence a process.
  A breakpoint left in the program by a killed gdb would kill it at the next hit (SIGTRAP),
  so the host never kills gdb while it waits (tracer/attach/inject.py).

Prints one line ``trace-quit-inject: {json}`` saying what happened.
"""

import json
import os
import signal
import time

import gdb  # noqa: F401 (provided by gdb)

WAKE = signal.SIGURG


def out(**fields):
    print("trace-quit-inject: " + json.dumps(fields), flush=True)


def watchdog(pid, seconds):
    """A child process that sends ``pid`` SIGURG after ``seconds`` unless killed first.

    Returns (child pid, read end of a pipe the child writes to just before it fires)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            time.sleep(seconds)
            os.write(w, b"x")
            os.kill(pid, WAKE)
        finally:
            os._exit(0)
    os.close(w)
    return child, r


def disarm(dog):
    """Kill the watchdog; True if it had already fired."""
    child, r = dog
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass  # gdb's own SIGCHLD handling reaped it
    os.set_blocking(r, False)
    try:
        fired = os.read(r, 1) == b"x"
    except BlockingIOError:
        fired = False
    os.close(r)
    return fired


def main():
    t_attached = time.monotonic()
    pid = gdb.selected_inferior().pid
    timeout = float(os.environ["TRACE_QUIT_INJECT_TIMEOUT"])
    code = os.environ["TRACE_QUIT_INJECT_CODE"].encode()
    addr = json.loads(os.environ["TRACE_QUIT_INJECT_ADDRS"])
    for command in ("set pagination off", "set confirm off", "set unwindonsignal on",
                    "set print thread-events off", "handle all nostop noprint pass",
                    "handle SIGURG stop print nopass"):
        gdb.execute(command, to_string=True)
    try:
        bp = gdb.Breakpoint("*%d" % addr["PyEval_SaveThread"], internal=True)
    except gdb.error as exc:
        out(ok=False, stage="symbols", error=str(exc))
        return
    stopped_s = time.monotonic() - t_attached
    dog = watchdog(pid, timeout)
    t_wait = time.monotonic()
    try:
        gdb.execute("continue", to_string=True)
    finally:
        fired = disarm(dog)
        hits = bp.hit_count
        bp.delete()
    waited_s = time.monotonic() - t_wait
    if hits == 0 or fired:
        out(ok=False, stage="safe_point", error="no thread reached a safe point (PyEval_SaveThread) in %gs" % timeout,
            stopped_s=stopped_s, waited_s=waited_s)
        return
    t_call = time.monotonic()
    dog = watchdog(pid, timeout)
    try:
        # By address, with the code string written into a malloc'd buffer: gdb needs no symbol
        # of the program at all (reading them while it is stopped is the long part of a pause).
        buf = int(gdb.parse_and_eval("((void *(*)(unsigned long))%d)(%d)" % (addr["malloc"], len(code) + 1)))
        if not buf:
            raise gdb.error("malloc returned NULL")
        gdb.selected_inferior().write_memory(buf, code + b"\0")
        state = int(gdb.parse_and_eval("((int (*)(void))%d)()" % addr["PyGILState_Ensure"]))
        rc = int(gdb.parse_and_eval("((int (*)(const char *))%d)(%d)" % (addr["PyRun_SimpleString"], buf)))
        gdb.parse_and_eval("((void (*)(int))%d)(%d)" % (addr["PyGILState_Release"], state))
        gdb.parse_and_eval("((void (*)(void *))%d)(%d)" % (addr["free"], buf))
    except gdb.error as exc:
        disarm(dog)
        out(ok=False, stage="call", error=str(exc).splitlines()[0][:300], stopped_s=stopped_s, waited_s=waited_s)
        return
    fired = disarm(dog)
    out(ok=rc == 0 and not fired, stage="done", method="gdb", rc=rc, stopped_s=stopped_s, waited_s=waited_s,
        call_s=time.monotonic() - t_call)


try:
    main()
except Exception as exc:  # say it; gdb -batch detaches on exit whatever happened
    out(ok=False, stage="gdb", error="%s: %s" % (type(exc).__name__, exc))
try:
    gdb.execute("detach", to_string=True)
except Exception:
    pass
