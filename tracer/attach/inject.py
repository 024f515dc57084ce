"""Run the agent's bootstrap inside a running CPython: gdb on 3.8-3.13, ``sys.remote_exec`` on 3.14+.

Either way the program runs a script file we wrote into the session's private directory (owned
by the program's user, 0700). The script loads tracer/agent by path, exactly as the launch-time
sitecustomize does, calls ``start``/``stop``/``inspect`` in tracer/agent/attach.py and writes
its answer to a result file next to it. The host reads that file; nothing else comes back.

The rule that shapes the gdb driver: never leave the process stopped, never leave a breakpoint
in it. gdb is bounded from inside (tracer/attach/gdb_script.py's watchdog); the host only
wakes it (SIGURG to the target, which gdb swallows) and, when gdb is gone, makes sure the
target is not left in the stopped state.
"""

import itertools
import json
import os
import signal
import subprocess
import time

from trace_quit.tracer import agent as agent_pkg
from trace_quit.tracer.attach import symbols
from trace_quit.tracer.attach.errors import InjectError

GDB_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gdb_script.py")
MARKER = "trace-quit-inject: "
#: gdb reads the interpreter's symbols before our script runs; on a busy machine that takes
#: seconds. Beyond this margin on top of the injection timeout, gdb is woken and then ended.
GDB_STARTUP_S = 30.0
_serial = itertools.count(1)

_BOOTSTRAP = '''\
# trace-quit: run once inside process {pid} by `trace-quit --pid` ({action}), then deleted.
def _trace_quit_attach(agent_dir, action, channel, result_path, cancel_path):
    import json
    import os
    import sys
    status = {{"ok": False}}
    if os.path.exists(cancel_path):
        return  # the tracer gave up waiting (sys.remote_exec ran it late)
    try:
        if "_trace_quit_agent" not in sys.modules:
            import importlib.util
            spec = importlib.util.spec_from_file_location(
                "_trace_quit_agent", os.path.join(agent_dir, "__init__.py"),
                submodule_search_locations=[agent_dir])
            module = importlib.util.module_from_spec(spec)
            sys.modules["_trace_quit_agent"] = module
            spec.loader.exec_module(module)
        import importlib
        attach = importlib.import_module("_trace_quit_agent.attach")
        if action == "start":
            status = attach.start(channel)
        elif action == "stop":
            status = attach.stop()
        else:
            status = {{"ok": True, "inspect": attach.inspect()}}
    except BaseException as exc:
        status["error"] = "%s: %s" % (type(exc).__name__, exc)
    status["pid"] = os.getpid()
    fd = os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(status, default=str).encode())
    finally:
        os.close(fd)


_trace_quit_attach({agent_dir!r}, {action!r}, {channel!r}, {result!r}, {cancel!r})
'''

# What PyRun_SimpleString runs: read the script and exec it in its own namespace. It runs in
# __main__'s namespace, so it binds no name; a failure is swallowed (no traceback printed
# into the program's stderr).
_ONE_LINER = ("try:\n exec(compile(open({path!r},'rb').read(),{path!r},'exec'),"
              "{{'__name__':'__trace_quit_attach__'}})\nexcept BaseException:\n pass\n")


def write_bootstrap(session_dir, target, action, channel_path):
    """Write the script for one injection; return (script, result, cancel) paths."""
    n = next(_serial)
    base = os.path.join(session_dir, "attach-%d-%s-%d" % (target.pid, action, n))
    script, result, cancel = base + ".py", base + ".result", base + ".cancel"
    text = _BOOTSTRAP.format(pid=target.pid, action=action, agent_dir=agent_pkg.AGENT_DIR,
                             channel=channel_path, result=result, cancel=cancel)
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chown(script, target.uid, target.gid)
    return script, result, cancel


def inject(target, action, session_dir, channel_path, timeout):
    """Run ``action`` ("start" | "stop" | "inspect") in ``target``; its status dict, or InjectError."""
    script, result, cancel = write_bootstrap(session_dir, target, action, channel_path)
    t0 = time.monotonic()
    keep = False
    try:
        if target.version >= (3, 14):
            keep = True  # on a timeout it may still run later: it must find the script and the cancel file
            info = _remote_exec(target, script, result, cancel, timeout)
            keep = False
        else:
            info = _gdb(target, _ONE_LINER.format(path=script), timeout)
        status = _read_result(result)
        if status is None:
            raise InjectError("the bootstrap did not run in process %d%s" % (
                target.pid, (": " + info["error"]) if info.get("error") else ""))
        if not status.get("ok"):
            raise InjectError("the agent did not start in process %d: %s" % (target.pid, status.get("error")))
        status["inject"] = dict(info, total_s=round(time.monotonic() - t0, 3))
        return status
    finally:
        for path in (script, result) if not keep else ():
            try:
                os.unlink(path)
            except OSError:
                pass


def _read_result(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


# --- 3.8-3.13: gdb ---------------------------------------------------------------------------

#: Handed to gdb as "the program" so that it reads no symbol of the real one (see symbols.py).
STAND_IN = "/bin/true"


def _gdb(target, code, timeout):
    """Drive one gdb batch session; return what tracer/attach/gdb_script.py reported."""
    tracer = _tracer_pid(target.pid)
    if tracer:
        raise InjectError("process %d is already traced by process %d (a debugger or strace): "
                          "only one ptrace tracer at a time" % (target.pid, tracer))
    try:
        addresses = symbols.resolve(target.pid)
    except (symbols.SymbolError, OSError) as exc:
        raise InjectError("%s: a stripped or unusual build (the eBPF layer works without it)" % exc) from None
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C",
           "TRACE_QUIT_INJECT_CODE": code, "TRACE_QUIT_INJECT_TIMEOUT": str(timeout),
           "TRACE_QUIT_INJECT_ADDRS": json.dumps(addresses)}
    argv = ["gdb", "-nx", "-batch", "-q", "-iex", "set debuginfod enabled off", "-iex", "set auto-load off",
            "-iex", "set auto-solib-add off", "-iex", "set exec-file-mismatch off"]
    if os.path.exists(STAND_IN):
        argv.append(STAND_IN)
    argv += ["-x", GDB_SCRIPT, "-p", str(target.pid)]
    try:
        # Its own session: a Ctrl-C at the terminal must not reach gdb (it would interrupt the
        # target at an arbitrary point); the host decides when and how gdb stops.
        gdb = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, start_new_session=True)
    except FileNotFoundError:
        raise InjectError("gdb is not installed (apt-get install gdb, or run scripts/setup.sh)") from None
    interrupted = None
    try:
        try:
            out, err = gdb.communicate(timeout=timeout * 2 + GDB_STARTUP_S)
        except KeyboardInterrupt as exc:  # finish cleanly below, then re-raise
            interrupted = exc
            out, err = _stop_gdb(gdb, target.pid)
        except subprocess.TimeoutExpired:
            out, err = _stop_gdb(gdb, target.pid)
    finally:
        _never_stopped(target.pid)
    if interrupted is not None:
        raise interrupted
    return _parse(out, err, gdb.returncode)


def _tracer_pid(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _stop_gdb(gdb, pid):
    """gdb overran: wake it (SIGURG to the target ends its wait or unwinds its call), then end it."""
    for action in (lambda: os.kill(pid, signal.SIGURG), gdb.terminate, gdb.kill):
        try:
            action()
        except ProcessLookupError:
            pass
        try:
            return gdb.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            continue
    return gdb.communicate()


def _never_stopped(pid):
    """If gdb went away leaving the target stopped (state T), let it run again."""
    from trace_quit.tracer.attach.target import proc_state

    for _ in range(10):
        state = proc_state(pid)
        if state not in ("T", "t"):
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _parse(out, err, returncode):
    for line in (out or b"").decode("utf-8", "replace").splitlines():
        if line.startswith(MARKER):
            try:
                info = json.loads(line[len(MARKER):])
            except ValueError:
                break
            if not info.get("ok"):
                raise InjectError(_explain(info))
            return info
    text = (err or b"").decode("utf-8", "replace")
    if "ptrace: Operation not permitted" in text:
        raise InjectError("ptrace was refused (kernel.yama.ptrace_scope, or a container without "
                          "CAP_SYS_PTRACE): the eBPF layer works without it")
    last = [line for line in text.splitlines() if line.strip()][-1:] or ["gdb exited with status %s" % returncode]
    raise InjectError("gdb failed: %s" % last[0][:200])


def _explain(info):
    stage = info.get("stage")
    if stage == "safe_point":
        return ("no thread of the program reached a point where Python code can run safely within the "
                "inject timeout (busy in C code without releasing the GIL?): try a longer --inject-timeout")
    if stage == "symbols":
        return "the interpreter exports no PyEval_SaveThread (a stripped or unusual build)"
    return "gdb: %s" % info.get("error")


# --- 3.14+: sys.remote_exec (PEP 768) ---------------------------------------------------------

def _remote_exec(target, script, result, cancel, timeout):
    """Ask the target's own interpreter to run ``script`` at its next safe evaluation point."""
    probe = [target.exe, "-I", "-c", "import sys; sys.remote_exec(int(sys.argv[1]), sys.argv[2])",
             str(target.pid), script]
    t0 = time.monotonic()
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=timeout + 10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InjectError("sys.remote_exec could not be called: %s" % exc) from None
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["status %d" % done.returncode]
        raise InjectError("sys.remote_exec failed: %s" % last[0][:200])
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if os.path.exists(result):
            return {"method": "remote_exec", "waited_s": round(time.monotonic() - t0, 3)}
        time.sleep(0.02)
    # It may still run later: the cancel file makes it return at once when it does.
    fd = os.open(cancel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    raise InjectError("the program did not reach a safe evaluation point within %gs "
                      "(sys.remote_exec): try a longer --inject-timeout" % timeout)

