"""Queue the bootstrap in a running CPython: a few milliseconds of ptrace on one thread.

No debugger, no code of the target's run by root. One thread (the main one) is seized and
interrupted; on it, two plain C calls are made, each returning to address 0 so that the
return traps back to us:

1. ``mmap`` of a fresh anonymous page (a system call wrapper: no allocator lock, safe wherever
   the thread stopped; ``malloc`` is not), into which the bootstrap's text is written through
   ``/proc/PID/mem``;
2. ``Py_AddPendingCall(PyRun_SimpleString, page)``: the interpreter's own queue, callable
   without the GIL; the eval loop runs ``PyRun_SimpleString(page)`` on the main thread at its
   next check, between two bytecodes, where it would run a signal handler;
3. (``munmap`` of pages of earlier injections that have answered.)

Then every register is put back, the full XSAVE area included (gdb 13 cannot write this
kernel's AMX-sized area: its calls failed and killed the target on this machine), and the
thread is let go. A thread stopped inside a system call restarts it as the kernel would:
``orig_rax`` is restored with the rest, so the kernel's own restart logic runs on resume.
A signal that arrives for the thread while it is held is delivered when it is let go. Other
threads never stop. Everything is bounded by ``timeout``.
"""

import ctypes
import ctypes.util
import errno
import os
import signal
import struct
import time

PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000
XSTATE_MAX = 1 << 16
PROT_RW = 0x1 | 0x2
MAP_PRIVATE_ANON = 0x02 | 0x20
#: struct user_regs_struct (x86-64)
REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
ARGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
RED_ZONE = 128


class PtraceError(Exception):
    """The injection could not be made; the thread has been let go (or the process is gone)."""


class Died(PtraceError):
    """The process ended while held."""


class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in REGS]


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)


def _ptrace(request, tid, addr=None, data=None):
    ctypes.set_errno(0)
    result = _libc.ptrace(request, tid, addr, data)
    if result == -1 and ctypes.get_errno():
        err = ctypes.get_errno()
        raise PtraceError("ptrace(%#x): %s" % (request, os.strerror(err)))
    return result


class Held:
    """One thread of ``pid``, seized and stopped; ``release()`` puts it back as it was."""

    def __init__(self, pid, timeout):
        self.pid = self.tid = pid
        self.deadline = time.monotonic() + timeout
        self.pending_signal = 0   # a signal that arrived while held: delivered at release
        self.mem = None
        try:
            _ptrace(PTRACE_SEIZE, self.tid, None, None)
        except PtraceError:
            if ctypes.get_errno() == errno.EPERM:
                raise PtraceError("ptrace was refused (kernel.yama.ptrace_scope, or a container without "
                                  "CAP_SYS_PTRACE)") from None
            raise
        try:
            _ptrace(PTRACE_INTERRUPT, self.tid)
            sig, ours = self._wait_stop()
            if not ours:  # a signal of the program's came first: held here, delivered at release
                self.pending_signal = sig
            self.regs = Regs()
            _ptrace(PTRACE_GETREGS, self.tid, None, ctypes.byref(self.regs))
            self.xstate = ctypes.create_string_buffer(XSTATE_MAX)
            self.iov = IoVec(ctypes.cast(self.xstate, ctypes.c_void_p), XSTATE_MAX)
            _ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, ctypes.byref(self.iov))
            self.mem = os.open("/proc/%d/mem" % pid, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self._let_go()
            raise

    def _wait_stop(self):
        """Wait for the thread's next stop: (signal, True for our interrupt or a group stop)."""
        while True:
            try:
                got, status = os.waitpid(self.tid, os.WNOHANG | WALL)
            except ChildProcessError:
                raise Died("the process ended") from None
            if got == 0:
                if time.monotonic() > self.deadline:
                    raise TimeoutError()
                time.sleep(0.0005)
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise Died("the process ended")
            return os.WSTOPSIG(status), status >> 16 == PTRACE_EVENT_STOP

    def call(self, func, *args):
        """Call ``func(*args)`` on the held thread; its return value (rax)."""
        regs = Regs.from_buffer_copy(self.regs)
        sp = ((self.regs.rsp - RED_ZONE - 256) & ~0xF) - 8  # at entry, rsp + 8 is 16-aligned
        os.pwrite(self.mem, struct.pack("<Q", 0), sp)  # the return address: 0, which traps
        regs.rsp, regs.rip, regs.rax, regs.orig_rax = sp, func, 0, 2 ** 64 - 1  # no syscall restart
        for name, value in zip(ARGS, args):
            setattr(regs, name, value & (2 ** 64 - 1))
        _ptrace(PTRACE_SETREGS, self.tid, None, ctypes.byref(regs))
        deliver = 0
        while True:
            _ptrace(PTRACE_CONT, self.tid, None, ctypes.c_void_p(deliver))
            deliver = 0
            sig, ours = self._wait_stop()
            now = Regs()
            _ptrace(PTRACE_GETREGS, self.tid, None, ctypes.byref(now))
            if sig == signal.SIGSEGV and now.rip == 0:
                return now.rax
            if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
                raise PtraceError("the called function faulted (%s at %#x)" % (signal.Signals(sig).name, now.rip))
            if not ours:
                self.pending_signal = sig  # the program's own signal (SIGURG, SIGCHLD...): kept for release
            # our own interrupt, or a group stop: go on

    def write(self, addr, data):
        os.pwrite(self.mem, data, addr)

    def release(self):
        """Registers (XSAVE area too) as they were, then let the thread go with its pending signal."""
        try:
            _ptrace(PTRACE_SETREGS, self.tid, None, ctypes.byref(self.regs))
            _ptrace(PTRACE_SETREGSET, self.tid, NT_X86_XSTATE, ctypes.byref(self.iov))
        except PtraceError:
            pass  # running (a call timed out): _let_go stops it and restores them
        self._let_go()

    def _let_go(self):
        if self.mem is not None:
            os.close(self.mem)
            self.mem = None
        try:
            _ptrace(PTRACE_DETACH, self.tid, None, ctypes.c_void_p(self.pending_signal))
        except PtraceError:
            # Not stopped (a timeout mid-call): stop it, then detach.
            try:
                _ptrace(PTRACE_INTERRUPT, self.tid)
                self.deadline = time.monotonic() + 5
                sig, ours = self._wait_stop()
                if not ours:
                    self.pending_signal = sig
                _ptrace(PTRACE_SETREGS, self.tid, None, ctypes.byref(self.regs))
                _ptrace(PTRACE_SETREGSET, self.tid, NT_X86_XSTATE, ctypes.byref(self.iov))
                _ptrace(PTRACE_DETACH, self.tid, None, ctypes.c_void_p(self.pending_signal))
            except (PtraceError, TimeoutError, AttributeError):
                pass


def queue(pid, addresses, text, size, unmap, timeout, placeholder):
    """Map a page in ``pid``, write ``text`` there and queue it as a pending call. Returns info."""
    t0 = time.monotonic()
    try:
        held = Held(pid, timeout)
    except TimeoutError:
        raise PtraceError("the main thread did not stop within %gs" % timeout) from None
    page = 0
    try:
        page = held.call(addresses["mmap"], 0, size, PROT_RW, MAP_PRIVATE_ANON, 2 ** 64 - 1, 0)
        if page >= 2 ** 64 - 4096 or page == 0:
            raise PtraceError("mmap failed in the target (%d)" % (page - 2 ** 64 if page >= 2 ** 63 else page))
        # The bootstrap reads its own page (cancel byte, answer): its address goes in now.
        held.write(page, text.replace(placeholder, b"%016x" % page, 1) + b"\0")
        rc = ctypes.c_int(held.call(addresses["Py_AddPendingCall"], addresses["PyRun_SimpleString"], page)
                          & 0xFFFFFFFF).value
        if rc != 0:
            held.call(addresses["munmap"], page, size)
            raise PtraceError("Py_AddPendingCall returned %d (the queue is full, or the interpreter is "
                              "shutting down)" % rc)
        for old, old_size in unmap:
            held.call(addresses["munmap"], old, old_size)
    except TimeoutError:
        raise PtraceError("a call in the target did not return within %gs" % timeout) from None
    finally:
        held.release()
    return {"method": "pending_call", "page": page, "stopped_s": round(time.monotonic() - t0, 4)}
