"""The agent's channel: whole lines only, garbage dropped and counted."""

import os

from trace_quit.tracer import events as ev
from trace_quit.tracer.channel import AgentChannel



class _Times:
    """b"t1".. as record times within this run (the channel refuses a time before it existed, or to come)."""

    def __getitem__(self, key):
        return ev.now_ns() + int(key[1:])


T = _Times()


def test_lines_split_across_writes_are_reassembled(tmp_path):
    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        # Whole agent records (events.check() lets only valid ones through), split mid-line.
        os.write(fd, (b'{"k":"conn_open","t":%(t1)d,"pid":7,"tid":7,"conn":5,"stack":[]}\n{"k":"conn_cl' % T))
        first = ch.read_events()
        os.write(fd, (b'ose","t":%(t2)d,"pid":7,"tid":7,"conn":5,"stack":[]}\nnot json\n[1,2]\n' % T))
        second = ch.read_events()
        os.close(fd)
        assert [e["k"] for e in first] == ["conn_open"]
        assert [e["k"] for e in second] == ["conn_close"]
        assert all(e["src"] == "agent" for e in first + second)
        assert ch.invalid_lines == 2
    finally:
        ch.close()
    assert not os.path.exists(ch.dir)


def test_only_the_agents_kinds_enter_and_every_other_line_is_counted_by_pid(tmp_path):
    """A traced program may write anything into the channel: only valid agent kinds come out."""
    from trace_quit.tracer import events as ev

    ch = AgentChannel(os.getuid(), os.getgid())
    forged = [(b'{"k":"trailer","t":%(t1)d,"pid":42,"exit_status":0}' % T),
              (b'{"k":"bpf_close","t":%(t2)d,"pid":42,"conn":1,"cause":"gc","gen":2}' % T),
              (b'{"k":"bpf_close_ret","t":%(t3)d,"pid":42,"conn":1,"wire":"confirmed"}' % T),
              (b'{"k":"child_exit","t":%(t4)d,"pid":42,"status":0}' % T),
              b'{"format":"trace-quit/capture","version":1,"argv":["x"]}',
              b'{"k":"conn_open","t":"soon","pid":42}',
              b'not json', b'[1,2]', b'"k"', b'\xff\xfe']
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        valid = b'\n{"k":"conn_open","t":%(t5)d,"pid":43,"tid":43,"conn":7,"stack":[]}\n' % T
        os.write(fd, b"\n".join(forged) + valid)
        events = ch.read_events()
        os.close(fd)
    finally:
        ch.close()
    assert [(e["k"], e["src"], e["pid"]) for e in events] == [("conn_open", "agent", 43)]
    assert dict(ch.rejected) == {42: 5, "?": 5}
    assert ch.rejected_summary()["total"] == 10
    assert set(e["k"] for e in events) <= ev.AGENT_KINDS


def test_a_line_that_crashes_the_tally_is_rejected_and_the_reader_goes_on(tmp_path):
    """{"k":"agent_lost","n":"x"} once killed the reader thread (ValueError): now it is one rejected line."""
    from trace_quit.tracer.record import Recorder, RunOptions

    class Sink:
        def __init__(self):
            self.events = []

        def emit(self, event):
            self.events.append(event)

    rec = Recorder(RunOptions(argv=["x"], output=str(tmp_path / "x.tqcap")))
    rec.channel = AgentChannel(os.getuid(), os.getgid())
    rec.writer = Sink()
    try:
        fd = os.open(rec.channel.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, (b'{"k":"agent_lost","t":%(t1)d,"pid":9,"n":"x"}\n' % T)
                     + (b'{"k":"gc_counts","t":%(t2)d,"pid":9,"by_gen":{"0":"y"}}\n' % T)
                     + (b'{"k":"agent_lost","t":%(t3)d,"pid":9,"tid":9,"n":2}\n' % T))
        os.close(fd)
        rec._drain_agent()
    finally:
        rec.channel.close()
    assert [(e["k"], e["n"]) for e in rec.writer.events] == [("agent_lost", 2)]
    assert rec.tally.lost["agent"] == 2
    assert dict(rec.channel.rejected) == {9: 2}


def test_numbers_out_of_their_bounds_are_rejected():
    """A forged lost-event count, generation, pid, cause or time does not enter the capture."""
    import json

    now = ev.now_ns()
    base = {"t": now, "pid": 7, "tid": 7}
    good = [dict(base, k="agent_lost", n=3), dict(base, k="gc_counts", by_gen={"0": 5, "2": 1}),
            dict(base, k="conn_destroy", conn=9, cause="gc", gen=2, cid=1)]
    bad = [dict(base, k="agent_lost", n=10**18), dict(base, k="agent_lost", n=-5),
           dict(base, k="gc_counts", by_gen={"9999": 1}), dict(base, k="gc_counts", by_gen={"0": -1}),
           dict(base, k="conn_destroy", conn=9, cause="gc", gen=7, cid=1),
           dict(base, k="conn_destroy", conn=9, cause="\x1b[2J", gen=None, cid=None),
           dict(base, k="conn_destroy", conn=-9, cause="gc", gen=0, cid=1),
           dict(base, k="conn_open", conn=9, stack=[], pid=10**9),
           dict(base, k="conn_open", conn=9, stack=[], t=1),                 # before the channel existed
           dict(base, k="conn_open", conn=9, stack=[], t=now + 3600 * 10**9),  # an hour from now
           dict(base, k="gc_start", gen=0, cid=1, site="x", thread="t", counts=[1, 2, 3, 4])]
    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"".join(json.dumps(e).encode() + b"\n" for e in good + bad))
        events = ch.read_events()
        os.close(fd)
    finally:
        ch.close()
    assert [e["k"] for e in events] == ["agent_lost", "gc_counts", "conn_destroy"]
    assert ch.invalid_lines == len(bad)
    assert "outside" in ch.first_reason[7]


def test_forged_pids_cannot_grow_the_rejected_table_without_bound():
    from trace_quit.tracer import channel

    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        for pid in range(1, 5000):
            ch.reject({"pid": pid}, "forged")
    finally:
        ch.close()
    assert len(ch.rejected) <= channel.MAX_REJECTED_PIDS + 1 and ch.invalid_lines == 4999
