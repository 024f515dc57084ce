"""Run the agent's bootstrap inside a running CPython (3.8+): a pending call, queued through ptrace.

The one injection point (docs/attach.md): the main thread is held for a few milliseconds while
a page is mapped in the target, the bootstrap's text written into it and ``PyRun_SimpleString(page)``
queued with ``Py_AddPendingCall`` (tracer/attach/ptrace.py). The interpreter runs it on its main
thread between two bytecodes, where it would run a signal handler.

Nothing goes through a file: the text travels inline (written through ptrace into the target's memory),
and the answer comes back in the same page, which the bootstrap writes through its own
``/proc/self/mem`` and trace-quit reads through ``/proc/PID/mem`` (bounded, parsed as data).
Root therefore opens no path the program's user could plant, and runs nothing of the target's:
not its interpreter, not its site-packages (tests/system/test_attach_security.py).

A main thread that does not come back to Python (blocked in ``join()`` or ``select()``) leaves the
call queued: after the timeout trace-quit writes a nul over the page's first byte, so the call,
if it ever runs, runs an empty string; the eBPF layer carries on alone.
"""

import json
import os
import time

from trace_quit.tracer import agent as agent_pkg
from trace_quit.tracer.attach import deathwatch, symbols
from trace_quit.tracer.attach.errors import InjectError, TargetDied

PAGE = 4096
STATUS_MAX = 1024            # room for the bootstrap's answer, at the end of its mapping...
STATUS_MAX_INSPECT = 16384   # ... inspect's (the tests' look inside the program) is longer
PAGE_PLACEHOLDER = "@" * 16  # replaced with the page's address (hex), see ptrace.py
POLL_S = 0.02
#: pid -> [(page, size)] of injections that answered: unmapped at the next injection.
_answered = {}

# Run with exec() in a namespace of its own: nothing is bound in the program's __main__.
_BOOTSTRAP = r'''
def main(page, status_off, agent_dir, action, channel):
    import json, os, sys
    try:
        mem = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.pread(mem, 1, page) == b"\0":
            return  # cancelled: trace-quit stopped waiting for this call
        status = {"ok": False}
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
                status = {"ok": True, "inspect": attach.inspect()}
        except Exception as exc:
            status["error"] = ("%s: %s" % (type(exc).__name__, exc))[:300]
        status["pid"] = os.getpid()
        body = json.dumps(status, default=str).encode()
        if len(body) > STATUS_MAX - 2:
            body = json.dumps({"ok": False, "error": "answer too long", "pid": os.getpid()}).encode()
        os.pwrite(mem, body + b"\0", page + status_off + 1)
        os.pwrite(mem, b"\1", page + status_off)  # written last: the answer is complete
    finally:
        os.close(mem)


main(0x@PAGE@, STATUS_OFF, AGENT_DIR, ACTION, CHANNEL)
'''

# What PyRun_SimpleString runs (it runs in __main__'s namespace, so it binds no name). The first
# byte is the cancel byte. A KeyboardInterrupt meant for the program is handed back to it; any
# other failure is swallowed: an exception escaping a pending call would surface in the
# program's code as a SystemError.
_PAGE_TEXT = ("\ntry:\n exec(%s,{'__name__':'__trace_quit_attach__'})\n"
              "except KeyboardInterrupt:\n import _thread\n _thread.interrupt_main()\n"
              "except BaseException:\n pass\n")


def page_text(action, channel_path, status_off, status_max):
    """The source text that goes into the target's page (its address still a placeholder)."""
    src = (_BOOTSTRAP.replace("0x@PAGE@", "0x" + PAGE_PLACEHOLDER)
           .replace("STATUS_OFF", str(status_off)).replace("STATUS_MAX", str(status_max))
           .replace("AGENT_DIR", repr(agent_pkg.AGENT_DIR)).replace("ACTION", repr(action))
           .replace("CHANNEL", repr(channel_path)))
    return _PAGE_TEXT % repr(src)


def layout(action, channel_path):
    """(text bytes, mapping size, answer offset, answer size): the text first, the answer last."""
    status_max = STATUS_MAX_INSPECT if action == "inspect" else STATUS_MAX
    probe = page_text(action, channel_path, 0, status_max).encode()
    size = -(-(len(probe) + 1 + status_max + 16) // PAGE) * PAGE
    status_off = size - status_max
    return page_text(action, channel_path, status_off, status_max).encode(), size, status_off, status_max


def inject(target, action, channel_path, timeout):
    """Run ``action`` ("start" | "stop" | "inspect") in ``target``; its status dict, or InjectError."""
    if target.other_root:
        raise InjectError("process %d runs in another root (a chroot or container): the agent would need a "
                          "path there, which its users could plant" % target.pid)
    t0 = time.monotonic()
    text, size, status_off, status_max = layout(action, channel_path)
    info = _queue(target, text, size, timeout)
    page = info["page"]
    status = _wait_answer(target, page, status_off, status_max, timeout, t0)
    _answered.setdefault(target.pid, []).append((page, size))
    if not isinstance(status, dict):
        raise InjectError("process %d answered something that is not the bootstrap's status" % target.pid)
    if not status.get("ok"):
        raise InjectError("the agent's %s failed in process %d: %s" % (action, target.pid,
                                                                       _printable(status.get("error"))))
    status["inject"] = dict(info, total_s=round(time.monotonic() - t0, 3))
    return status


def _wait_answer(target, page, status_off, status_max, timeout, t0):
    """Poll the page's status area until the bootstrap has written it; cancel on timeout."""
    path = "/proc/%d/mem" % target.pid
    deadline = t0 + timeout
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        _raise_if_dead(target, "during injection")
        raise InjectError("cannot read process %d's memory: %s" % (target.pid, exc.strerror)) from None
    try:
        while True:
            try:
                data = os.pread(fd, status_max, page + status_off)
            except OSError:
                data = b""
            if data[:1] == b"\1":
                body = data[1:].split(b"\0", 1)[0]
                try:
                    return json.loads(body.decode("utf-8", "replace"))
                except ValueError:
                    return None
            if not data:
                _raise_if_dead(target, "during injection")
            if time.monotonic() >= deadline:
                _cancel(fd, page, target)
                raise InjectError(
                    "the main thread of process %d ran no Python within %gs (blocked in join(), select() or "
                    "a long C call?): the queued call was cancelled" % (target.pid, timeout))
            try:
                time.sleep(POLL_S)
            except BaseException:  # Ctrl-C while waiting: the call must not run after we left
                _cancel(fd, page, target)
                raise
    finally:
        os.close(fd)


def _cancel(fd, page, target):
    """A nul over the page's first byte: the queued call, if it ever runs, runs an empty string."""
    try:
        os.pwrite(fd, b"\0", page)
    except OSError:
        _raise_if_dead(target, "during injection")


def _raise_if_dead(target, when):
    from trace_quit.tracer.attach.target import proc_state

    if proc_state(target.pid) in (None, "Z", "X"):
        raise TargetDied(target.pid, when, deathwatch.how_it_died(target.pid))


def _printable(text):
    """Program-controlled text made safe for a terminal line (no control characters), bounded."""
    text = str(text)[:300]
    return "".join(c if c.isprintable() else "\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c)
                   for c in text)


# --- ptrace -----------------------------------------------------------------------------------

def _queue(target, text, size, timeout):
    """Hold the main thread for two calls (tracer/attach/ptrace.py); what it reported."""
    tracer = _tracer_pid(target.pid)
    if tracer:
        raise InjectError("process %d is already traced by process %d (a debugger or strace): "
                          "only one ptrace tracer at a time" % (target.pid, tracer))
    try:
        addresses = symbols.resolve(target.pid)
    except (symbols.SymbolError, OSError) as exc:
        raise InjectError("%s: a stripped or unusual build (the eBPF layer works without it)" % exc) from None
    from trace_quit.tracer.attach import ptrace

    unmap = _answered.pop(target.pid, [])
    try:
        return ptrace.queue(target.pid, addresses, text, size, unmap, timeout, PAGE_PLACEHOLDER.encode())
    except ptrace.PtraceError as exc:
        _answered.setdefault(target.pid, []).extend(unmap)
        _raise_if_dead(target, "during injection")
        raise InjectError(str(exc)) from None


def _tracer_pid(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
