"""Probes leave no trace: detach restores the code, nothing in tracefs, semaphores back to 0.

Checked the way a user would: the breakpoint byte (0xcc) at the probed offset of
libmariadb in a live process's memory, the USDT semaphore of Debian's python3.11 in a
live process, and /sys/kernel/tracing/uprobe_events. Including a tracer SIGKILLed mid-way.
"""

import os
import signal
import subprocess
import time

import pytest

from bpf_harness import file_bytes, mapped_address, our_perf_fds, perf_holders, read_mem, read_uprobe_events
from tq_support import VENV_PY

pytestmark = [pytest.mark.bpf]


def assert_restored(read, original, timeout=10):
    """The probed bytes (or semaphore) are back to ``original`` once no probe holds them.

    Other trace-quit runs on a shared machine may probe the same library offset: then the
    byte legitimately stays 0xcc, and what we can assert is that no perf fd of ours is left.
    """
    deadline = time.monotonic() + timeout
    while read() != original and time.monotonic() < deadline:
        time.sleep(0.05)
    if read() != original:
        holders = perf_holders()
        assert holders, "probe left behind with no tracer running"
        assert our_perf_fds() == []


def _targets():
    from trace_quit.tracer.bpf import resolve_targets

    return resolve_targets([VENV_PY, "-c", "pass"], None, 0, 0)


def _close_site(targets):
    return [p for p in targets.probes if p.role == "close"][0]


@pytest.fixture(scope="module")
def mapped_libmariadb():
    import MySQLdb._mysql  # noqa: F401  (maps the client library into this process)

    site = _close_site(_targets())
    return site.path, site.offset, mapped_address(os.getpid(), site.path, site.offset)


@pytest.mark.parametrize("wait", [True, False])
def test_detach_restores_the_code(mapped_libmariadb, wait):
    from trace_quit.tracer.bpf import BpfSession

    path, offset, addr = mapped_libmariadb
    original = file_bytes(path, offset, 1)
    before = read_uprobe_events()
    s = BpfSession(_targets(), lambda e: None)
    s.attach(os.getpid())
    assert read_mem(os.getpid(), addr, 1) == b"\xcc"  # the uprobe's int3 is in our own copy
    t0 = time.monotonic()
    s.detach(wait=wait)
    elapsed = time.monotonic() - t0
    s.detach()  # idempotent
    if not wait:
        assert elapsed < 0.5
    assert our_perf_fds() == []
    assert_restored(lambda: read_mem(os.getpid(), addr, 1), original)
    assert read_uprobe_events() == before


TRACER = r"""
import os, sys, time
from trace_quit.tracer.bpf import BpfSession, resolve_targets
s = BpfSession(resolve_targets([sys.argv[1], "-c", "pass"], None, 0, 0), lambda e: None)
s.attach(os.getpid())
print("attached", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("when", ["while_compiling", "after_attach"])
def test_a_sigkilled_tracer_leaves_nothing(mapped_libmariadb, when):
    path, offset, addr = mapped_libmariadb
    original = file_bytes(path, offset, 1)
    # A live Debian python3.11 (USDT): its gc__start semaphore must return to 0.
    from trace_quit.tracer.bpf import elf

    exe = elf.Elf("/usr/bin/python3.11")
    sem = [p for p in exe.usdt_probes() if p.name == "gc__start"][0].semaphore
    bystander = subprocess.Popen(["/usr/bin/python3.11", "-c", "import time; time.sleep(60)"])
    before = read_uprobe_events()
    try:
        tracer = subprocess.Popen([VENV_PY, "-c", TRACER, VENV_PY], stdout=subprocess.PIPE, text=True)
        if when == "after_attach":
            assert tracer.stdout.readline().strip() == "attached"
            assert read_mem(bystander.pid, sem, 2) != b"\0\0"  # the kernel set the semaphore
            assert read_mem(os.getpid(), addr, 1) == b"\xcc"
        else:
            time.sleep(0.5)
        tracer.send_signal(signal.SIGKILL)
        tracer.wait(timeout=30)
        assert_restored(lambda: read_mem(os.getpid(), addr, 1), original)
        assert_restored(lambda: read_mem(bystander.pid, sem, 2), b"\0\0")
        assert read_uprobe_events() == before
    finally:
        bystander.kill()
        bystander.wait()
