"""tracer/attach's reading of a pid: which Python, free-threaded or not; --duration."""

import argparse

import pytest

from trace_quit.tracer.attach import target
from trace_quit.tracer.commands.arguments import duration

SHARED_313 = ("7f00-7f10 r--p 00000000 08:01 1 /root/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0\n"
              "7f10-7f20 r-xp 00010000 08:01 1 /root/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0\n")
FREE_THREADED = "7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libpython3.13t.so.1.0\n"


@pytest.mark.parametrize("maps, exe, expected", [
    (SHARED_313, "/root/.pyenv/versions/3.13.0/bin/python3.13", ((3, 13), False)),
    ("", "/usr/bin/python3.11", ((3, 11), False)),                  # Debian's static build
    (FREE_THREADED, "/usr/bin/python3.13t", ((3, 13), True)),
    ("", "/usr/bin/python3.13t", ((3, 13), True)),
    ("", "/usr/bin/python3.14", ((3, 14), False)),                  # sys.remote_exec's path
    ("", "/usr/bin/sleep", (None, False)),
    ("", "/usr/bin/python3.11 (deleted)", ((3, 11), False)),        # upgraded under it
])
def test_version_from_maps_and_exe(maps, exe, expected):
    assert target.version_from(maps, exe) == expected


def test_unsupported_builds_are_said():
    t = target.Target(pid=1, uid=0, gid=0, exe="x", version=(3, 13), free_threaded=True)
    assert "free-threaded" in t.unsupported
    assert "3.8+" in target.Target(1, 0, 0, "x", (3, 7), False).unsupported
    assert target.Target(1, 0, 0, "x", (3, 14), False).unsupported is None


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("0.5m", 30)])
def test_duration(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "-5", "0", "5d"])
def test_bad_duration(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
