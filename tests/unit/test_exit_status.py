"""The program's exit status comes back whatever happens to the tracer's own output."""

import shlex
import subprocess
import sys

from tq_support import TRACE_QUIT

PROGRAM = "import sys, time; sys.stderr.write('x'); sys.stderr.flush(); time.sleep(1); sys.exit(3)"


def test_closed_stderr_keeps_the_programs_status(tmp_path):
    """`… 2>&1 | head -c1`: the report's writes fail (EPIPE); it used to exit 0 (or 120)."""
    cmd = " ".join([shlex.quote(a) for a in TRACE_QUIT + ["--no-bpf", "-o", str(tmp_path / "x.tqcap"), "--",
                                                        sys.executable, "-c", PROGRAM]])
    proc = subprocess.run(["bash", "-c", cmd + " 2>&1 | head -c1; echo \" ${PIPESTATUS[0]}\""],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.stdout == "x 3\n", proc.stderr
    assert proc.stderr == ""
