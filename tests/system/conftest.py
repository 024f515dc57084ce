"""System tests (root, eBPF): skip only with a reason naming the missing capability.

On the project's machines (Debian 12 + bpfcc, scripts/setup.sh run, as root) nothing here
may skip; the reasons exist for laptops and CI runners without those capabilities.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tq_support
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bpf_harness


def _bpf_missing():
    """The first missing capability for eBPF tests, or None."""
    if os.geteuid() != 0:
        return "not root (eBPF tests need root)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (apt-get install python3-bpfcc; venv with --system-site-packages)"
    if not os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return "the kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe)"
    if not os.path.isdir("/sys/kernel/tracing/events"):
        return "tracefs is not mounted at /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


_MISSING = _bpf_missing()


def pytest_collection_modifyitems(config, items):
    if _MISSING is None:
        return
    skip = pytest.mark.skip(reason="eBPF unavailable: " + _MISSING)
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bpf_server():
    """One disposable MariaDB/MySQL server for the eBPF tests (general log on)."""
    from trace_quit.workloads.server import DisposableServer

    with DisposableServer() as server:
        yield server
