"""``trace-quit demo``: a workload under the tracer, on a disposable server.

Starts a private MariaDB/MySQL (never the system one), runs the workload under the tracer
with the server-side sampler, writes the capture and an HTML report into one directory,
prints the text report and where everything is.
"""

import os
import sys

from trace_quit.tracer.commands.common import CliError
from trace_quit.tracer.errors import EX_NOPERM


class DemoCommand:
    """Run a workload under the tracer on a disposable server, then report.

    examples:
      sudo trace-quit demo                      (engine-per-call: a new Engine per call, ~80 s)
      sudo trace-quit demo shared-engine -- --tasks 100
    """

    name = "demo"

    def prepare_parser(self, parser):
        parser.add_argument("experiment", nargs="?", default="engine-per-call",
                            help="a workload name (python -m trace_quit.workloads --help lists them)")
        parser.add_argument("--out", default="trace-quit-demo", help="directory for the capture and report")
        parser.add_argument("--no-bpf", action="store_true", help="agent only (no root needed)")
        parser.epilog = "Options after -- go to the workload, e.g.: trace-quit demo shared-engine -- --tasks 100"

    def run(self, args):
        return run_demo(args.experiment, args.out, bpf=not args.no_bpf, workload_args=getattr(args, "passthrough", []))


def run_demo(experiment, out_dir, bpf=True, workload_args=()):
    """Run ``experiment`` traced; returns the workload's exit status."""
    from trace_quit import analysis
    from trace_quit.analysis.capture import load
    from trace_quit.tracer.launch import RunAs
    from trace_quit.tracer.program import resolve_bpf_targets
    from trace_quit.tracer.record import Recorder, RunOptions
    from trace_quit.workloads.server import DisposableServer  # the demo drives the workloads' server

    if bpf and os.geteuid() != 0:
        raise CliError("the demo's eBPF probes need root: run it with sudo, or add --no-bpf", EX_NOPERM)
    run_as = RunAs.invoking_user()
    os.makedirs(out_dir, exist_ok=True)
    if not run_as.is_current:
        os.chown(out_dir, run_as.uid, run_as.gid)
    capture = os.path.join(out_dir, "%s.tqcap" % experiment)
    html = os.path.join(out_dir, "%s.html" % experiment)
    sys.stderr.write("trace-quit demo: starting a disposable database server…\n")
    with DisposableServer() as server:
        dsn = server.dsn_tcp
        argv = [sys.executable, "-m", "trace_quit.workloads", experiment, "--dsn", dsn] + list(workload_args)
        targets = resolve_bpf_targets(argv, run_as) if bpf else None
        sys.stderr.write("trace-quit demo: running %s under the tracer ("
                         "this takes a while at full size)…\n" % experiment)
        options = RunOptions(argv=argv, output=capture, force=True, bpf=bpf, dsn=server.admin_dsn,
                             sample_user=server.user, run_as=run_as)
        result = Recorder(options, bpf_targets=targets,
                          on_note=lambda t: sys.stderr.write("trace-quit: %s\n" % t)).run()
    report = analysis.build_report(load(capture))
    analysis.render([report], "html", path=html, force=True, owner=(run_as.uid, run_as.gid))
    analysis.render([report], "text", stream=sys.stdout, color=sys.stdout.isatty())
    sys.stdout.write("\ncapture: %s\nHTML report: %s\n" % (capture, html))
    return result.exit_status
