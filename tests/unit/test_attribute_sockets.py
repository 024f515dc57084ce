"""The kernel's socket-level close as evidence (attribute._socket_context), per driver behaviour.

Its explicit_close means "COM_QUIT written outside any collection or finalisation" and its
refcount "closed without COM_QUIT outside any collection": contexts, not causes.
"""

from trace_quit.analysis.attribute import QUIT_BY_WHOM, _socket_context
from trace_quit.tracer import events as ev
from trace_quit.tracer.records import make

SOCK = make(ev.BPF_SOCK_CLOSE)


def test_a_com_quit_only_the_kernel_saw_is_unknown_not_a_close():
    # mysql-connector's C destructor after a refcount drop, or a close(): the kernel cannot tell.
    assert _socket_context(None, None, SOCK, ev.EXPLICIT_CLOSE) == (ev.UNKNOWN, QUIT_BY_WHOM)
    assert _socket_context(make(ev.CONN_DESTROY), ev.UNKNOWN, SOCK, ev.EXPLICIT_CLOSE) == (ev.UNKNOWN, QUIT_BY_WHOM)


def test_the_agent_says_who_sent_it():
    assert _socket_context(make(ev.CONN_CLOSE), ev.EXPLICIT_CLOSE, SOCK, ev.EXPLICIT_CLOSE) == (ev.EXPLICIT_CLOSE, "")
    # The C extension's destructor sends COM_QUIT: refcount and the kernel's context agree.
    assert _socket_context(make(ev.CONN_DESTROY), ev.REFCOUNT, SOCK, ev.EXPLICIT_CLOSE) == (ev.REFCOUNT, "")


def test_a_socket_closed_after_the_collection_keeps_the_collections_cause():
    # aiomysql: __del__ runs in the collection, asyncio closes the socket a loop step later.
    cause, said = _socket_context(make(ev.CONN_DESTROY), ev.GC, SOCK, ev.REFCOUNT)
    assert cause == ev.GC and "closed later" in said


def test_brackets_and_other_kernel_records_are_left_alone():
    assert _socket_context(None, None, SOCK, ev.GC) == (ev.GC, None)          # a bracket is evidence
    assert _socket_context(None, None, SOCK, ev.REFCOUNT) == (ev.REFCOUNT, None)  # PyMySQL-like, alone
    assert _socket_context(None, None, make(ev.BPF_CLOSE), ev.EXPLICIT_CLOSE) == (ev.EXPLICIT_CLOSE, None)
