"""Run a command under a BpfSession the way the CLI does: corked fork, attach, release, poll, detach.

Kept independent of tracer/cli.py so the eBPF layer is tested on its own; the child never
runs Python code of ours after the fork except reading the cork pipe and exec.
"""

import collections
import os
import time

from trace_quit.tracer.bpf import BpfSession, resolve_targets

UPROBE_EVENTS = "/sys/kernel/tracing/uprobe_events"


def read_uprobe_events():
    with open(UPROBE_EVENTS) as f:
        return f.read()


class Traced:
    """What a traced run produced."""

    def __init__(self, pid, events, status, describe, stats, output):
        self.pid, self.events, self.status = pid, events, status
        self.describe, self.stats, self.output = describe, stats, output

    def of(self, kind):
        return [e for e in self.events if e["k"] == kind]

    def close_causes(self):
        return collections.Counter((e["cause"], e["gen"]) for e in self.of("bpf_close"))

    def wire_states(self):
        return collections.Counter(e["wire"] for e in self.of("bpf_close_ret"))


def trace_command(argv, env=None, uid=0, gid=0, timeout=300, output_path=None, on_attached=None,
                  poll_interval=0.02, before_detach=None, **session_kwargs):
    """Run ``argv`` traced from its first instruction; return a Traced.

    ``on_attached(session)`` runs before the child is released, ``before_detach(session)``
    once it has exited, while the probes are still loaded (tests/bench/probe_cost.py)."""
    env = dict(os.environ if env is None else env)
    targets = resolve_targets(argv, env, uid, gid)
    events = []
    session = BpfSession(targets, events.append, **session_kwargs)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the corked child
        try:
            os.close(w)
            os.read(r, 1)
            os.close(r)
            if output_path:
                fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            if gid:
                os.setgid(gid)
            if uid:
                os.setuid(uid)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(r)
    status = None
    try:
        session.attach(pid)
        if on_attached:
            on_attached(session)
        os.write(w, b"go")
        os.close(w)
        deadline = time.monotonic() + timeout
        last_poll = time.monotonic()
        while True:
            if time.monotonic() - last_poll >= poll_interval:
                session.poll()
                last_poll = time.monotonic()
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise TimeoutError("traced command did not finish in %s s: %s" % (timeout, argv))
            time.sleep(0.02)
        if before_detach:
            before_detach(session)
    finally:
        session.detach()
    output = None
    if output_path and os.path.exists(output_path):
        with open(output_path) as f:
            output = f.read()
    return Traced(pid, events, status, session.describe(), session.stats(), output)


# --- what a probe leaves in a live process (shared by the detach and fault tests) -----------

def mapped_address(pid, path, file_offset):
    """The address where ``file_offset`` of ``path`` is mapped in process ``pid``."""
    real = os.path.realpath(path)
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == real:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                off = int(parts[2], 16)
                if off <= file_offset < off + (end - start):
                    return start + file_offset - off
    raise LookupError("%s+%#x not mapped in %d" % (path, file_offset, pid))


def uprobes_of(pid):
    """[(fd, realpath, file offset)] of the uprobes (BPF programs attached) process ``pid`` holds.

    Asked of the kernel with bpf(BPF_TASK_FD_QUERY) for each perf event fd, so a test can tell
    another tracer's probe on the *same* site from one of its own left behind, instead of
    treating every process that holds any perf event on a shared machine as a suspect."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) != "anon_inode:[perf_event]":
                continue
        except OSError:
            continue
        name = ctypes.create_string_buffer(4096)
        attr = (ctypes.c_uint8 * 48)()
        ctypes.c_uint32.from_buffer(attr, 0).value = pid
        ctypes.c_uint32.from_buffer(attr, 4).value = int(fd)
        ctypes.c_uint32.from_buffer(attr, 12).value = len(name)
        ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(name)
        if libc.syscall(_SYS_BPF, _BPF_TASK_FD_QUERY, attr, ctypes.sizeof(attr)) != 0:
            continue  # gone meanwhile, or a perf event without a BPF program
        if ctypes.c_uint32.from_buffer(attr, 28).value in (_FD_TYPE_UPROBE, _FD_TYPE_URETPROBE):
            out.append((int(fd), os.path.realpath(name.value.decode(errors="replace")),
                        ctypes.c_uint64.from_buffer(attr, 32).value))
    return out


_SYS_BPF = 321  # x86-64
_BPF_TASK_FD_QUERY = 20
_FD_TYPE_UPROBE, _FD_TYPE_URETPROBE = 4, 5


def site_holders(path, offset, exclude=()):
    """Pids other than ours (and ``exclude``) holding a uprobe at ``path``+``offset`` (None: any
    offset in ``path``): another tracer probing the very same instruction, which legitimately
    keeps its 0xcc (or a USDT semaphore) in place."""
    real = os.path.realpath(path)
    return sorted({pid for pid, p, o in held_sites(exclude) if p == real and offset in (None, o)})


def held_sites(exclude=()):
    """{(pid, realpath, offset)} of every uprobe held by a process other than ours and ``exclude``."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (os.getpid(),) + tuple(exclude):
            out.update((int(name), p, o) for _, p, o in uprobes_of(int(name)))
    return out


def our_uprobe_events(pid=None):
    """Lines of tracefs uprobe_events created by process ``pid`` (default: this one): bcc names
    its tracefs probes ..._bcc_<pid>, so other suites' probes on the machine are not counted."""
    tag = "_bcc_%d" % (os.getpid() if pid is None else pid)
    return [line for line in read_uprobe_events().splitlines() if line.split(" ")[0].endswith(tag)]


def our_perf_fds():
    return [fd for fd in os.listdir("/proc/self/fd")
            if os.path.exists("/proc/self/fd/" + fd)
            and os.readlink("/proc/self/fd/" + fd) == "anon_inode:[perf_event]"]


def read_mem(pid, address, n):
    with open("/proc/%d/mem" % pid, "rb") as f:
        f.seek(address)
        return f.read(n)


def file_bytes(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)
