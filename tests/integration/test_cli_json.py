"""`trace-quit --format json -- …`: the report alone on stdout; after --format html, a next step that works."""

import json
import os
import shlex
import subprocess
import sys

import jsonschema
import pytest

from tq_support import TRACE_QUIT

pytestmark = pytest.mark.server

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "report.schema.json")

# Two connections: one closed, one left to interpreter shutdown; the program also prints, which
# must not end up in the JSON.
PROGRAM = ("import sys, MySQLdb; from trace_quit.workloads import dsn; "
           "print('hello from the program'); "
           "a = MySQLdb.connect(**dsn.parse(sys.argv[1])); a.close(); "
           "b = MySQLdb.connect(**dsn.parse(sys.argv[1]))")


def test_json_report_is_stdout_alone_and_valid(server, tmp_path):
    out = tmp_path / "r.json"
    with open(out, "wb") as stdout:
        proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--format", "json", "-o", str(tmp_path / "j.tqcap"), "--",
                                            sys.executable, "-c", PROGRAM, server.dsn_tcp],
                              stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, cwd=str(tmp_path),
                              timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    report = json.loads(out.read_text())  # the whole of stdout is one JSON document
    with open(SCHEMA) as f:
        jsonschema.validate(report, json.load(f))
    assert report["com_quit"]["by_cause"]["explicit_close"] == 1
    assert report["com_quit"]["by_cause"]["shutdown"] == 1
    assert report["connections"]["opened"] == 2
    # the program's output and our status lines went to stderr
    assert "hello from the program" in err
    assert "trace-quit: capture written to" in err


def test_after_html_the_suggested_next_command_works(server, tmp_path):
    capture = tmp_path / "h.tqcap"
    proc = subprocess.run(TRACE_QUIT + ["--no-bpf", "--format", "html", "-o", str(capture), "--",
                                        sys.executable, "-c", PROGRAM, server.dsn_tcp],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "h.html").exists()
    nxt = next(line for line in proc.stderr.splitlines() if line.startswith("trace-quit: next: "))
    assert nxt == "trace-quit: next: open %s in a browser, or: trace-quit report %s" % (
        tmp_path / "h.html", capture)
    command = shlex.split(nxt.split(", or: ", 1)[1])
    assert command[:2] == ["trace-quit", "report"]
    again = subprocess.run(TRACE_QUIT + command[1:], capture_output=True, text=True, cwd=str(tmp_path), timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("trace-quit report")
