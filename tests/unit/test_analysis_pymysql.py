"""PyMySQL in the analysis: sockets paired across layers by pid + fd, aborted clients, drivers.

The records are the real ones' shapes (tracer/agent/pymysql.py, tracer/bpf/probes/msock.h):
the agent's conn is the socket inode, the kernel's bpf_sock_* carry only pid + fd.
"""

import json

from trace_quit.analysis import build_report, load, render
from trace_quit.analysis.aborted import KERNEL_ONLY_BASE, pair_sockets
from synth import SynthCapture
from trace_quit.tracer import events as ev
from trace_quit.tracer.records import typed

PID = 4242


class PyCapture(SynthCapture):
    """SynthCapture plus PyMySQL connections as each layer records them."""

    ino = 90000

    def py_open(self, t_s, fd, tid=None):
        PyCapture.ino += 1
        ino, tid, t = PyCapture.ino, tid or self.pid, self.ns(t_s)
        self._bpf({"k": ev.BPF_SOCK_CONNECT, "t": t, "pid": self.pid, "tid": tid, "fd": fd, "lib": False})
        self._agent({"k": ev.CONN_OPEN, "t": t + 2000, "pid": self.pid, "tid": tid, "conn": ino, "fd": fd,
                     "driver": "pymysql", "stack": ["/srv/app/app.py:3 in connect"]})
        return ino, fd

    def py_end(self, t_s, sock, cause, gen=None, tid=None):
        ino, fd = sock
        tid, t = tid or self.pid, self.ns(t_s)
        if cause == ev.EXPLICIT_CLOSE:
            self._agent({"k": ev.CONN_CLOSE, "t": t, "pid": self.pid, "tid": tid, "conn": ino, "fd": fd,
                         "driver": "pymysql", "quit": True, "stack": ["/srv/app/app.py:9 in done"]})
        else:
            self._agent({"k": ev.CONN_DESTROY, "t": t, "pid": self.pid, "tid": tid, "conn": ino, "fd": fd,
                         "driver": "pymysql", "quit": False, "cause": cause, "gen": gen, "cid": None})
        self._bpf({"k": ev.BPF_SOCK_CLOSE, "t": t + 3000, "pid": self.pid, "tid": tid, "fd": fd, "lib": False,
                   "cause": cause, "gen": gen, "quit_sent": cause == ev.EXPLICIT_CLOSE, "sends": 3, "t_greeting": 0,
                   "wire": ev.WIRE_CONFIRMED if cause == ev.EXPLICIT_CLOSE else ev.WIRE_NOT_SENT})


def _workload(path, layers, sampler=False):
    """2 close(), 3 refcount, 5 gc generation 0 on PyMySQL; fds reused (5, 6) as PyMySQL reuses them."""
    s = PyCapture(path, layers=layers, sampler=sampler)
    if sampler:
        s.emit({"k": ev.SERVER_STATUS, "t": s.ns(0.01), "src": ev.SRC_SAMPLER, "aborted_clients": 40,
                "aborted_connects": 0, "at": "start"})
    t = 0.1
    for cause, n in ((ev.EXPLICIT_CLOSE, 2), (ev.REFCOUNT, 3)):
        for _ in range(n):
            sock = s.py_open(t, fd=5)
            s.py_end(t + 0.01, sock, cause)
            t += 0.02
    held = [s.py_open(t + i * 0.01, fd=6 + i) for i in range(5)]
    s.emit({"k": ev.BPF_GC_START, "t": s.ns(0.5), "src": ev.SRC_BPF, "pid": PID, "tid": PID, "gen": 0})
    s._agent({"k": ev.GC_START, "t": s.ns(0.5) + 10, "pid": PID, "tid": PID, "gen": 0, "cid": 1, "site": "",
              "thread": "MainThread"})
    for i, sock in enumerate(held):
        s.py_end(0.501 + i * 0.001, sock, ev.GC, gen=0)
    s._agent({"k": ev.GC_STOP, "t": s.ns(0.51), "pid": PID, "tid": PID, "gen": 0, "cid": 1, "collected": 20,
              "uncollectable": 0})
    s.emit({"k": ev.BPF_GC_DONE, "t": s.ns(0.51) + 10, "src": ev.SRC_BPF, "pid": PID, "tid": PID, "gen": 0,
            "collected": 20})
    if sampler:
        s.emit({"k": ev.SERVER_STATUS, "t": s.ns(0.9), "src": ev.SRC_SAMPLER, "aborted_clients": 48,
                "aborted_connects": 0, "at": "end"})
    return s.finish(1.0)


def _check(r, driver):
    # The kernel alone sees a COM_QUIT, not who sent it (a close() or a destructor): unknown.
    closes = "unknown" if driver == "socket" else "explicit_close"
    assert {k: v for k, v in r.com_quit.by_cause.items() if v} == {closes: 2, "refcount": 3, "gc": 5}
    assert r.com_quit.gc_by_generation["0"] == 5
    assert r.connections.opened == 10 and r.connections.server == 0
    nq = r.no_quit
    assert nq.without_quit == 8 and nq.by_cause == {"refcount": 3, "gc": 5}
    assert nq.by_driver == {driver: {closes: 2, "refcount": 3, "gc": 5}}
    assert any(s.startswith("8 connections were closed without COM_QUIT") and "aborted client" in s for s in r.summary)
    assert r.findings[0].title == ("8 connections were closed without COM_QUIT: the server counts each as an "
                                   "aborted client")


def test_each_layer_alone_and_both_give_the_same_counts(tmp_path):
    for layers, driver in ((("agent",), "pymysql"), (("bpf",), "socket"), (("agent", "bpf"), "pymysql")):
        r = build_report(load(_workload(str(tmp_path / ("%s.tq" % "-".join(layers))), layers)))
        _check(r, driver)
        unknown = [q for q in r.quits if q.cause == ev.UNKNOWN]
        assert len(unknown) == (2 if layers == ("bpf",) else 0)
        assert all(q.reason.startswith("COM_QUIT sent, by whom unknown") for q in unknown)
        if "bpf" in layers:
            # The kernel saw the wire: not_sent is PyMySQL's normal destruction, not the server's doing.
            assert r.com_quit.wire == {"confirmed": 2, "not_sent": 8, "encrypted": 0, "unobserved": 0}
        else:
            assert r.com_quit.wire["unobserved"] == 10
        if layers == ("agent", "bpf"):
            assert all(q.reason is None for q in r.quits)  # both layers agree on every one
        assert r.no_quit.outside_library == (10 if layers == ("bpf",) else 0)


def test_sampler_aborted_clients_is_shown_next_to_ours(tmp_path):
    r = build_report(load(_workload(str(tmp_path / "s.tq"), ("agent",), sampler=True)))
    assert r.no_quit.server_aborted_clients == 8
    assert ("The server's Aborted_clients rose by 8 during the run (trace-quit counted 8 connections that "
            "ended without COM_QUIT).") in r.summary
    doc = json.loads(render(r, "json"))
    assert doc["no_quit"]["server_aborted_clients"] == 8 and doc["no_quit"]["without_quit"] == 8


def test_pairing_follows_fd_reuse_and_keeps_kernel_only_sockets_apart():
    def k(kind, t, fd, **kw):
        return dict({"k": kind, "t": t, "pid": 1, "tid": 1, "fd": fd, "src": "bpf"}, **kw)

    events = [k(ev.BPF_SOCK_CONNECT, 1, 5), dict(k(ev.CONN_OPEN, 2, 5, conn=111, driver="pymysql"), src="agent"),
              k(ev.BPF_SOCK_CLOSE, 3, 5), k(ev.BPF_SOCK_CONNECT, 4, 5), k(ev.BPF_SOCK_CLOSE, 5, 5),
              k(ev.BPF_SOCK_CONNECT, 6, 5), dict(k(ev.CONN_OPEN, 7, 5, conn=222, driver="pymysql"), src="agent"),
              k(ev.BPF_SOCK_CONNECT, 8, 9)]
    events = [typed(e) for e in events]
    pair_sockets(events)
    conns = [e.conn for e in events if e.k.startswith("bpf_sock")]
    # fd 5 three times: the agent's 111, a socket the agent never saw, the agent's 222; fd 9 still open.
    assert conns == [111, 111, KERNEL_ONLY_BASE + 1, KERNEL_ONLY_BASE + 1, 222, KERNEL_ONLY_BASE + 2]


def test_both_drivers_counted_per_driver_and_unprobed_driver_named(tmp_path):
    s = PyCapture(str(tmp_path / "b.tq"), layers=("agent",))
    s.emit({"k": ev.MODULE, "t": s.ns(0.01), "src": ev.SRC_AGENT, "pid": PID, "tid": PID, "name": "mysql.connector",
            "version": "9.0", "file": None, "driver": "mysql-connector-python", "probed": False})
    a = s.open(0.1)
    s.close(0.2, a, ev.EXPLICIT_CLOSE)
    sock = s.py_open(0.3, fd=7)
    s.py_end(0.4, sock, ev.REFCOUNT)
    r = build_report(load(s.finish(1.0)))
    assert r.no_quit.by_driver == {"mysqlclient": {"explicit_close": 1}, "pymysql": {"refcount": 1}}
    assert r.no_quit.without_quit_by_driver == {"pymysql": 1}
    assert "By driver: mysqlclient 1 (explicit_close 1); PyMySQL 1 (refcount 1)." in r.summary
    assert r.no_quit.unprobed_drivers == ["mysql-connector-python"]
    assert any(line.startswith("The program imported mysql-connector-python: trace-quit does not probe it")
               for line in r.summary)


def test_mysqlclient_destructions_are_not_aborted_clients(tmp_path):
    # mysqlclient's destructor sends COM_QUIT: nothing here is an aborted client, no new sentence.
    s = SynthCapture(str(tmp_path / "m.tq"), layers=("agent",))
    for cause in (ev.REFCOUNT, ev.EXPLICIT_CLOSE):
        s.close(0.2, s.open(0.1), cause)
    r = build_report(load(s.finish(1.0)))
    assert r.no_quit.without_quit == 0
    assert not any("without COM_QUIT" in line for line in r.summary)
    assert not any("without COM_QUIT" in f.title for f in r.findings)
