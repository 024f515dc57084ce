"""The agent's channel: whole lines only, garbage dropped and counted."""

import os

from trace_quit.tracer.channel import AgentChannel


def test_lines_split_across_writes_are_reassembled(tmp_path):
    ch = AgentChannel(os.getuid(), os.getgid())
    try:
        fd = os.open(ch.path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b'{"k":"conn_open","t":1}\n{"k":"conn_cl')
        first = ch.read_events()
        os.write(fd, b'ose","t":2}\nnot json\n[1,2]\n')
        second = ch.read_events()
        os.close(fd)
        assert [e["k"] for e in first] == ["conn_open"]
        assert [e["k"] for e in second] == ["conn_close"]
        assert all(e["src"] == "agent" for e in first + second)
        assert ch.invalid_lines == 2
    finally:
        ch.close()
    assert not os.path.exists(ch.dir)
