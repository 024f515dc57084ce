"""Builds we cannot run here are recognised and said, never given a wrong generation or offset.

CPython 3.14.0-3.14.4 (incremental collector), free-threaded builds (one generation, 32-byte
object header) and mysqlclient's connection struct (a lock added; MYSQL must stay first) are
checked from version numbers and from the bytes of the functions the tracer probes.
"""

import pytest

from trace_quit.tracer.bpf import compat


@pytest.mark.parametrize("version,gil_disabled,expected", [
    ((3, 8, 18), False, ("generational", True)),
    ((3, 10, 13), False, ("generational", True)),
    ((3, 13, 5), False, ("generational", True)),
    ((3, 14, 0), False, ("incremental", False)),
    ((3, 14, 4), False, ("incremental", False)),
    ((3, 14, 5), False, ("generational", True)),    # generational again from 3.14.5
    ((3, 15, 2), False, ("generational", True)),    # measured on Debian sid: three generations
    ((3, 16, 0), False, ("unknown", False)),        # newer, and it reported nothing: not claimed
    ((3, 13, 5), True, ("free-threaded", False)),
    ((3, 14, 5), True, ("free-threaded", False)),
    (None, False, ("unknown", False)),
])
def test_collector_by_version_and_build(version, gil_disabled, expected):
    kind, is_age, why = compat.collector(version, gil_disabled)
    assert (kind, is_age) == expected
    assert (why is None) == is_age  # every build whose numbers are not ages is said
    if kind == "incremental":
        assert "3.14.0-3.14.4" in why and "without a generation" in why
    if why:
        assert why.startswith("kernel layer: ")  # the caveat names the layer it applies to


@pytest.mark.parametrize("version,thresholds,generations,expected", [
    ((3, 15, 2), [2000, 10, 10], 3, "generational"),
    ((3, 16, 0), [2000, 10, 10], 3, "generational"),    # newer, but it says so itself
    ((3, 14, 5), [2000, 10, 0], 2, "unknown"),          # an incremental-looking report is not overruled
    ((3, 14, 2), [2000, 10, 0], 3, "incremental"),
    ((3, 13, 5), [700, 10, 10], 3, "generational"),
])
def test_collector_from_what_the_interpreter_reports_at_start(version, thresholds, generations, expected):
    assert compat.collector(version, False, thresholds, generations)[0] == expected


def test_object_header_by_build():
    assert compat.expected_header(False) == 16
    assert compat.expected_header(True) == 32  # ob_tid, flags/mutex/gc bits/local rc, shared rc, ob_type


# _mysql_ConnectionObject_close of mysqlclient 2.3.2 as pip builds it here (its per-connection lock):
#   push %rbp; xor %esi,%esi; push %rbx; mov %rdi,%rbx; sub $8,%rsp; mov 0x518(%rdi),%rdi;
#   call PyThread_acquire_lock; cmp $1,%eax; jne ..; cmpb $0,0x508(%rbx); je ..;
#   call PyEval_SaveThread; lea 0x10(%rbx),%rdi; mov %rax,%rbp; call mysql_close
LOCKED_CLOSE = bytes.fromhex(
    "5531f6534889fb4883ec08488bbf18050000e8e9c7ffff83f8010f858f000000"
    "80bb0805000000745fe812ccffff488d7b104889c5e8b6cbffff")


def _shift_header(code, new):
    return code.replace(bytes.fromhex("488d7b10"), bytes.fromhex("488d7b") + bytes([new]))


def test_the_mysql_offset_is_read_from_the_close_function():
    assert compat.mysql_offsets_in_close(LOCKED_CLOSE) == [0x10]
    # A free-threaded build's connection object: MYSQL after a 32-byte header.
    assert compat.mysql_offsets_in_close(_shift_header(LOCKED_CLOSE, 0x20)) == [0x20]
    # disp32 form (lea 0x120(%rdi),%rdi) and an r8-r15 base (lea 0x10(%r12),%rdi).
    assert compat.mysql_offsets_in_close(bytes.fromhex("488dbf20010000") + b"\xe8\0\0\0\0") == [0x120]
    assert compat.mysql_offsets_in_close(bytes.fromhex("498d7c2410") + b"\xe8\0\0\0\0") == []  # SIB: not ours
    assert compat.mysql_offsets_in_close(bytes.fromhex("498d7d10") + b"\xe8\0\0\0\0") == [0x10]
    # A lea not followed by a call is not an argument being passed.
    assert compat.mysql_offsets_in_close(bytes.fromhex("488d7b10") + b"\x90" * 20) == []


class FakeSo:
    """The few ELF accessors mysqlclient_layout uses, over given bytes."""

    def __init__(self, close_code, imports=(b"PyThread_acquire_lock",)):
        self.dynstr = b"\0" + b"\0".join(imports) + b"\0"
        self.code = close_code

    def section(self, name):
        return {"offset": 0, "size": len(self.dynstr)} if name == ".dynstr" else None

    def read(self, offset, size):
        return self.dynstr if offset == 0 and size == len(self.dynstr) else self.code[:size]

    def symbol(self, name):
        class S:
            value, size = 0x1000, len(self.code)
        return S() if name == "_mysql_ConnectionObject_close" and self.code else None

    def vaddr_to_offset(self, vaddr):
        return 1


def test_a_lock_after_open_keeps_mysql_first_and_is_said():
    layout = compat.mysqlclient_layout(FakeSo(LOCKED_CLOSE), 16)
    assert layout["verified"] and layout["mysql_offset"] == 16 and layout["lock"]
    assert "lock" in layout["why"] and "+16" in layout["why"]
    plain = compat.mysqlclient_layout(FakeSo(LOCKED_CLOSE, imports=(b"PyEval_SaveThread",)), 16)
    assert plain["verified"] and not plain["lock"]


def test_a_moved_mysql_is_not_attributed():
    # The extension was built for a 32-byte header but the interpreter says 16 (or a struct
    # that put a field before MYSQL): closes must not be matched at the wrong address.
    layout = compat.mysqlclient_layout(FakeSo(_shift_header(LOCKED_CLOSE, 0x20)), 16)
    assert not layout["verified"] and layout["mysql_offset"] == 0x20
    assert "not attributed" in layout["why"]
    unknown = compat.mysqlclient_layout(FakeSo(b"\x90" * 32), 16)
    assert not unknown["verified"] and unknown["mysql_offset"] is None and "unverified" in unknown["why"]
