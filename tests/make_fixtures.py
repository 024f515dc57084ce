"""Record real captures for tests/unit/data (root: both layers, a disposable server).

    sudo .venv/bin/python tests/make_fixtures.py OUTDIR

Writes OUTDIR/known-causes-pymysql.tqcap (PyMySQL, both layers: destructions without
COM_QUIT) and OUTDIR/known-causes-bounded.tqcap (known-causes with --max-capture reached
mid-run: the ends after it counted from the kernel's evidence rows). Gzip them into
tests/unit/data, then regenerate the golden reports (tests/unit/test_golden_reports.py).
The server's password is checked absent from every capture.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tq_support import TRACE_QUIT, VENV_PY  # noqa: E402
from trace_quit.workloads.server import DisposableServer  # noqa: E402

RECORDINGS = {
    "known-causes-pymysql": (["known-causes-pymysql"], []),
    "known-causes-bounded": (["known-causes"], ["--max-capture", "64K"]),
}


def main(outdir, only=()):
    os.makedirs(outdir, exist_ok=True)
    with DisposableServer() as server:
        for name, (workload, extra) in sorted(RECORDINGS.items()):
            if only and name not in only:
                continue
            capture = os.path.join(outdir, name + ".tqcap")
            cmd = TRACE_QUIT + ["--format", "none", "--quiet", "--force", "-o", capture] + extra + [
                "--", VENV_PY, "-m", "trace_quit.workloads"] + workload + ["--dsn", server.dsn_socket]
            subprocess.run(cmd, check=True, cwd=outdir)
            with open(capture, "rb") as f:
                assert server.password.encode() not in f.read(), "password in %s" % capture
            print(capture)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
