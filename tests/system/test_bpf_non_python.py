"""issue 9: a command that is not Python runs under the eBPF layer instead of being refused.

`trace-quit -- /bin/echo hi` runs and reports that no MySQL client was seen; a shell that
starts the Python later (`bash -c "python ..."`, a `./run.sh`) is traced through the guesses
resolve_targets makes from the shell text, and the kernel side alone still gives the
known-causes workload's exact 44 causes.
"""

import collections
import json
import os
import stat
import subprocess

import pytest

from tq_support import KNOWN_CAUSES, KNOWN_CAUSES_TOTAL, TRACE_QUIT, VENV_PY, load_events, run_traced

pytestmark = [pytest.mark.bpf]

EXPECTED = KNOWN_CAUSES


def _probes_event(cap):
    return [e for e in cap.events if e["k"] == "bpf_probes"][0]


def test_echo_runs_under_bpf_and_the_report_says_no_mysql_client_was_seen(tmp_path):
    proc, capture = run_traced(tmp_path, ["/bin/echo", "hi"], bpf=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    cap = load_events(capture)
    assert cap.status == "complete" and cap.trailer["exit_status"] == 0
    probes = _probes_event(cap)
    assert probes["targets"]["command"]["python"] is False
    assert probes["targets"]["nothing_to_probe"] is None
    assert any(p["role"] == "close" for p in probes["probes"])  # the client library, in case it loads one
    assert not [e for e in cap.events if e["k"].startswith("bpf_") and e["k"] in ("bpf_connect", "bpf_close")]
    report = subprocess.run(TRACE_QUIT + ["report", capture, "--format", "json"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    r = json.loads(report.stdout)
    assert r["program"]["exit_status"] == 0
    assert r["connections"]["opened"] == 0 and r["connections"]["com_quit"] == 0
    text = subprocess.run(TRACE_QUIT + ["report", capture], capture_output=True, text=True).stdout
    assert "No MySQL connection was opened" in text


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.server
@pytest.mark.parametrize("launcher", ["bash-c", "run.sh"])
def test_a_shell_that_starts_python_later_gets_the_kernel_side_causes(server, tmp_path, launcher):
    workload = "%s -m trace_quit.workloads known-causes --dsn %s" % (VENV_PY, server.dsn_socket)
    if launcher == "bash-c":
        argv = ["bash", "-c", workload]
    else:
        argv = [_script(tmp_path / "run.sh", "#!/bin/sh\n# the app\necho starting\n%s\necho done\n" % workload)]
    proc, capture = run_traced(tmp_path, argv, bpf=True, extra=["--no-agent"])
    assert proc.returncode == 0, proc.stderr
    cap = load_events(capture)
    probes = _probes_event(cap)
    targets = probes["targets"]
    assert targets["command"]["python"] is False
    assert targets["guesses"][0]["interpreter"] == VENV_PY
    assert targets["guesses"][0]["why"].startswith("run by the s")  # shell command / script
    assert probes["missing"] == []
    closes = [e for e in cap.events if e["k"] == "bpf_close"]
    assert len(closes) == KNOWN_CAUSES_TOTAL
    assert collections.Counter((e["cause"], e["gen"]) for e in closes) == EXPECTED
    wire = collections.Counter(e["wire"] for e in cap.events if e["k"] == "bpf_close_ret")
    assert wire == {"confirmed": KNOWN_CAUSES_TOTAL}
    # The Python is a child of the shell (run.sh's sh forks it): every close comes from it.
    shell_pid = cap.header["child_pid"]
    pids = {e["pid"] for e in closes}
    assert len(pids) == 1
    if launcher == "run.sh":
        assert pids != {shell_pid}
        assert proc.stdout.startswith("starting\n") and proc.stdout.endswith("done\n")
    assert cap.trailer["lost"]["bpf"] == 0


def test_nothing_to_probe_runs_the_command_with_no_probe_attached(tmp_path, monkeypatch):
    # No python3 on PATH and an empty loader cache: resolve_targets finds nothing to probe;
    # the session then attaches nothing and says why, and the command still runs.
    from bpf_harness import trace_command
    from trace_quit.tracer.bpf import elf

    monkeypatch.setattr(elf, "ld_cache", lambda path="/etc/ld.so.cache": {})
    out = tmp_path / "out"
    run = trace_command(["/bin/echo", "hi"], env=dict(os.environ, PATH="/nonexistent"),
                        output_path=str(out))
    assert run.status == 0 and run.output == "hi\n"
    assert run.describe["probes"] == []
    assert [m["what"] for m in run.describe["missing"]] == ["eBPF probes"]
    assert "neither a Python nor a MySQL client library" in run.describe["missing"][0]["why"]
    assert {e["k"] for e in run.events} == {"bpf_stats"} and run.stats == {"emitted": 0, "dropped": 0}
