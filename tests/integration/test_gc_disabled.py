"""A program that calls gc.disable() after start: the report says gc.disable() was in effect (issue 16)."""

import json
import subprocess
import sys

import pytest

from tq_support import TRACE_QUIT, run_traced

pytestmark = pytest.mark.server

PROGRAM = ("import gc, sys, MySQLdb; from trace_quit.workloads import dsn; gc.disable(); "
           "c = MySQLdb.connect(**dsn.parse(sys.argv[1])); c.me = c; del c")


@pytest.mark.parametrize("disable", [True, False], ids=["gc-disabled", "gc-enabled"])
def test_gc_disable_after_start_is_reported(server, tmp_path, disable):
    program = PROGRAM if disable else PROGRAM.replace("gc.disable(); ", "")
    proc, capture = run_traced(tmp_path, [sys.executable, "-c", program, server.dsn_tcp])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    assert report["program"]["gc_disabled"] is disable
    if disable:  # no collection ran: the cycle outlived the program
        assert report["com_quit"]["by_cause"]["shutdown"] == 1
    said = [s for s in report["summary"] if s.startswith("gc.disable() was in effect")]
    assert len(said) == (1 if disable else 0)
