"""The agent's channel: whole lines only, garbage dropped and counted."""

import os

from trace_quit.tracer.channel import AgentChannel


def test_lines_split_across_writes_are_reassembled(tmp_path):
    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        # Whole agent records (events.check() lets only valid ones through), split mid-line.
        os.write(fd, b'{"k":"conn_open","t":1,"pid":7,"tid":7,"conn":5,"stack":[]}\n{"k":"conn_cl')
        first = ch.read_events()
        os.write(fd, b'ose","t":2,"pid":7,"tid":7,"conn":5,"stack":[]}\nnot json\n[1,2]\n')
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
    forged = [b'{"k":"trailer","t":1,"pid":42,"exit_status":0}',
              b'{"k":"bpf_close","t":2,"pid":42,"conn":1,"cause":"gc","gen":2}',
              b'{"k":"bpf_close_ret","t":3,"pid":42,"conn":1,"wire":"confirmed"}',
              b'{"k":"child_exit","t":4,"pid":42,"status":0}',
              b'{"format":"trace-quit/capture","version":1,"argv":["x"]}',
              b'{"k":"conn_open","t":"soon","pid":42}',
              b'not json', b'[1,2]', b'"k"', b'\xff\xfe']
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"\n".join(forged) + b'\n{"k":"conn_open","t":5,"pid":43,"tid":43,"conn":7,"stack":[]}\n')
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
        os.write(fd, b'{"k":"agent_lost","t":1,"pid":9,"n":"x"}\n{"k":"gc_counts","t":2,"pid":9,"by_gen":{"0":"y"}}\n'
                     b'{"k":"agent_lost","t":3,"pid":9,"tid":9,"n":2}\n')
        os.close(fd)
        rec._drain_agent()
    finally:
        rec.channel.close()
    assert [(e["k"], e["n"]) for e in rec.writer.events] == [("agent_lost", 2)]
    assert rec.tally.lost["agent"] == 2
    assert dict(rec.channel.rejected) == {9: 2}
