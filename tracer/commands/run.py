"""``trace-quit run`` (the default command): run a program under the tracer, or attach to one
(``--pid``), write its capture and print the report.

A traced run exits with the program's own status (128+N for signal N); before the program
starts: 2 usage, 126 not runnable, 127 not found, 69 eBPF unavailable, 77 needs root, 73
output exists or cannot be created. The recording is tracer/record.py's (tracer/attach/ for
``--pid``); this module checks the arguments, starts the metrics endpoint and prints the report.
"""

import argparse
import errno
import os
import shlex
import signal
import sys

from trace_quit.tracer.commands import arguments
from trace_quit.tracer.commands.common import (CAPTURE_SUFFIX, CliError, err, html_path_for, say, silence,
                                               write_report_file)
from trace_quit.tracer.errors import (EX_NOINPUT, EX_NOPERM, EX_NOTFOUND, EX_NOTRUNNABLE, EX_UNAVAILABLE, EX_USAGE,
                                      TraceQuitError)


class RunCommand:
    """Run a program under the tracer, write its capture and print the GC-versus-close report.

    examples:
      sudo trace-quit -- python main.py
      sudo trace-quit -o app.tqcap --dsn mysql://monitor:pw@127.0.0.1/app -- python main.py
      trace-quit --no-bpf -- python main.py          (no root: the in-process agent only)
    """

    name = "run"

    def prepare_parser(self, parser):
        parser.add_argument("-o", "--output",
                            help="capture file (default: trace-quit-<program>.<pid>%s)" % CAPTURE_SUFFIX)
        parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing capture")
        parser.add_argument("--dsn", help="also sample the server's connection count (PROCESSLIST) through this DSN")
        parser.add_argument("--sample-user",
                            help="the server user whose connections are counted (default: the DSN's user)")
        parser.add_argument("--no-bpf", action="store_true", help="no eBPF probes (no root needed): the agent only")
        parser.add_argument("--no-agent", action="store_true", help="no in-process agent: eBPF only")
        parser.add_argument("--as-root", action="store_true", help="run the program as root even under sudo")
        parser.add_argument("--pid", type=int, help="attach to this running Python process (and its children) "
                            "instead: eBPF plus the agent, injected; until it exits, --duration or Ctrl-C")
        parser.add_argument("--duration", type=arguments.duration, help="--pid: stop after this long (10m, 90s, 1h)")
        parser.add_argument("--max-capture", type=arguments.size, default=None, metavar="SIZE",
                            help="bound the capture (500M, 2G, 64K; 0: unbounded; default 1G): past it, "
                                 "events are counted in the trailer instead of written")
        parser.add_argument("--inject-timeout", type=arguments.seconds, default=None, metavar="SECONDS",
                            help="--pid: give up injecting the agent after this long (default 5)")
        parser.add_argument("--format", choices=("text", "json", "html", "none"), default="text",
                            help="report printed after the run (default: text); html is written next to the capture")
        parser.add_argument("--quiet", action="store_true", help="no live status line")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="serve Prometheus metrics (OpenMetrics) on this port while it runs")
        parser.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                            help="address the metrics endpoint binds to (default: 127.0.0.1, loopback only)")
        parser.add_argument("--metrics-linger", type=arguments.seconds, default=0.0, metavar="SECONDS",
                            help="after the program ends, keep serving until one scrape has read the final "
                                 "counts, at most this long (default: 0)")
        # Hidden, like bcc tools' --ebpf: print the eBPF program (cflags + probes.c) for the command; no root.
        parser.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the program and its arguments")

    def run(self, args):
        from trace_quit.tracer.signals import STOP_SIGNALS, Interrupted

        def stop_now(signum, frame):  # nothing started yet: stopping here leaves nothing behind
            raise Interrupted(signum)

        previous = {sig: signal.signal(sig, stop_now) for sig in STOP_SIGNALS}
        try:
            return self._run(args)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, args):
        argv = list(args.command)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if args.pid is not None:
            return self.run_attached(args, argv)
        if not argv:
            raise CliError("no program to trace: put it after --, as in: trace-quit -- python main.py", EX_USAGE)
        if args.dump_bpf:
            from trace_quit.tracer import bpf
            from trace_quit.tracer.bpf.compile import dump_program

            sys.stdout.write(dump_program(bpf.resolve_targets(argv, dict(os.environ))))
            return 0
        return self.run_launched(args, argv)

    def run_launched(self, args, argv):
        """The program given after --, started by the tracer."""
        from trace_quit.tracer.launch import RunAs
        from trace_quit.tracer.record import Recorder, RunOptions

        use_bpf = not args.no_bpf
        if use_bpf and os.geteuid() != 0:
            raise CliError("the eBPF probes need root: run it with sudo, or add --no-bpf to trace with "
                           "the in-process agent only", EX_NOPERM)
        if args.no_bpf and args.no_agent:
            raise CliError("--no-bpf and --no-agent together leave nothing to trace: drop one", EX_USAGE)
        run_as = RunAs.invoking_user(as_root=args.as_root)
        _check_runnable(argv[0])
        output = args.output or default_capture_name(argv)
        _check_outputs(output, args)
        targets = _launch_targets(argv, run_as, getattr(args, "cwd", None)) if use_bpf else None
        use_bpf = targets is not None
        options = RunOptions(argv=argv, output=output, force=args.force, bpf=use_bpf,
                             agent=not args.no_agent, dsn=args.dsn, sample_user=args.sample_user,
                             run_as=run_as, status=not args.quiet, max_capture=_max_capture(args),
                             cwd=getattr(args, "cwd", None))
        recorder = Recorder(options, bpf_targets=targets, on_note=lambda text: err(text))
        # Every intended error is a TraceQuitError (mapped once, in main); the capture of a
        # program that never started is removed, but only one this run created.
        metrics_server = _start_metrics(args, options, recorder)
        # --format json: the report is all that goes to stdout (`… > r.json`), so the program's
        # own stdout goes to stderr while it runs (tests/integration/test_cli_json.py).
        report_out = _divert_stdout() if args.format == "json" else None
        try:
            result = recorder.run()
        except TraceQuitError:
            if recorder.writer is not None:
                _remove_unstarted_capture(output)
            raise
        except ImportError as exc:
            raise CliError("the eBPF layer cannot load (%s): install bcc (scripts/setup.sh), "
                           "or add --no-bpf" % exc, EX_UNAVAILABLE) from None
        except Exception as exc:
            if type(exc).__name__ != "BpfUnavailable":
                raise
            # Nothing ran: the capture holds only a header and the program was not started.
            _remove_unstarted_capture(output)
            raise CliError(str(exc), EX_UNAVAILABLE) from None
        finally:
            _restore_stdout(report_out)
        return _conclude(result, args, metrics_server, result.exit_status, "; the program's exit status follows")

    def run_attached(self, args, argv):
        """--pid: the eBPF layer (and the agent, injected) on a process we did not start (tracer/attach/)."""
        from trace_quit.tracer import attach
        from trace_quit.tracer.attach.running import proc_cmdline, resolve_running_targets
        from trace_quit.tracer.launch import RunAs
        from trace_quit.tracer.record import RunOptions

        if argv:
            raise CliError("--pid traces a running process: give no command after --", EX_USAGE)
        if args.no_bpf:
            raise CliError("--pid needs the eBPF layer (the agent is injected beside it): drop --no-bpf",
                           EX_USAGE)
        if os.geteuid() != 0:
            raise CliError("attaching to a running process needs root: run it with sudo", EX_NOPERM)
        try:
            cmdline = proc_cmdline(args.pid)
        except OSError:
            raise CliError("no process %d: check the pid (ps -p %d)" % (args.pid, args.pid), EX_NOINPUT) from None
        try:
            py_target = attach.check_pid(args.pid)  # not Python, a zombie, ourselves: one line each
        except attach.AttachError as exc:
            raise CliError(str(exc), exc.code) from None
        output = args.output or default_capture_name(cmdline or ["pid%d" % args.pid])
        _check_outputs(output, args)
        targets = resolve_running_targets(args.pid, cmdline)
        options = RunOptions(argv=cmdline, output=output, force=args.force, bpf=True, agent=False, dsn=args.dsn,
                             sample_user=args.sample_user, run_as=RunAs.invoking_user(as_root=args.as_root),
                             status=not args.quiet, duration=args.duration, max_capture=_max_capture(args),
                             cwd=getattr(args, "cwd", None))
        recorder = attach.recorder_for(options, py_target, not args.no_agent, args.inject_timeout,
                                       bpf_targets=targets, on_note=lambda text: err(text))
        metrics_server = _start_metrics(args, options, recorder)
        try:
            result = recorder.run_attached(args.pid)
        except TraceQuitError:
            if recorder.writer is not None:
                _remove_unstarted_capture(output)
            raise
        except Exception as exc:
            if type(exc).__name__ != "BpfUnavailable":
                raise
            _remove_unstarted_capture(output)
            raise CliError(str(exc), EX_UNAVAILABLE) from None
        return _conclude(result, args, metrics_server, 0)


def _launch_targets(argv, run_as, cwd):
    """What the eBPF layer probes in the program; None (said in one line) when it has nothing to probe."""
    from trace_quit.tracer.bpf.compile import start_compile
    from trace_quit.tracer.program import resolve_bpf_targets

    start_compile()  # the probes compile while the command is resolved (start-up)
    targets = resolve_bpf_targets(argv, run_as, cwd=cwd)
    if getattr(targets, "nothing_to_probe", None):
        # Not an error: the program still runs (and the agent still loads into any Python it starts).
        err("no eBPF probes: %s; running it with the in-process agent only" % targets.nothing_to_probe)
        return None
    return targets


def _conclude(result, args, metrics_server, status, lost_suffix=""):
    """After the recording: what the capture lost, or the start-up that was interrupted, or the
    report; then the metrics endpoint stops. Returns ``status``."""
    if result.capture_error:
        err(result.capture_error + lost_suffix)
    elif result.interrupted is not None:
        err("interrupted by %s while starting: the program was not run; the capture %s says so"
            % (signal.Signals(result.interrupted).name, result.capture))
    else:
        _print_run_report(result, args.format, force=args.force)
    _stop_metrics(metrics_server, args)
    return status


def default_capture_name(argv):
    """trace-quit-<program>.<pid>.tqcap, <program> being the script a Python runs when there is one."""
    program = os.path.basename(argv[0])
    if program.endswith(".py"):  # ./main.py through its shebang: trace-quit-main.<pid>
        program = program[:-3]
    rest = argv[1:]
    if program.startswith("python"):
        for i, arg in enumerate(rest):
            if arg == "-m" and i + 1 < len(rest):
                program = rest[i + 1].rsplit(".", 1)[-1]
                break
            if arg == "-c":
                break
            if not arg.startswith("-"):
                program = os.path.splitext(os.path.basename(arg))[0]
                break
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in program) or "program"
    return "trace-quit-%s.%d%s" % (safe, os.getpid(), CAPTURE_SUFFIX)


def _check_runnable(program):
    import shutil

    if os.sep in program:
        if not os.path.exists(program):
            raise CliError("%s: no such file" % program, EX_NOTFOUND)
        if not os.access(program, os.X_OK) or os.path.isdir(program):
            raise CliError("%s is not an executable program" % program, EX_NOTRUNNABLE)
    elif shutil.which(program) is None:
        raise CliError("%s: command not found (check the name and your PATH)" % program, EX_NOTFOUND)


def _check_outputs(output, args):
    """The capture, and with --format html the page beside it (it obeys --force too)."""
    _check_output(output, args.force)
    if args.format == "html":
        _check_output(html_path_for(output), args.force)


def _check_output(path, force):
    """Refuse early (before anything runs) an output that exists, or whose directory does not."""
    from trace_quit.tracer.errors import OutputError, OutputExistsError

    if os.path.lexists(path) and not force:
        raise OutputExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError("cannot write %s: no directory %s (create it, or choose another -o)" % (path, directory))


def _max_capture(args):
    """The bound in bytes: --max-capture, else the default (1 GiB)."""
    from trace_quit.tracer.capture import DEFAULT_MAX_BYTES

    return DEFAULT_MAX_BYTES if args.max_capture is None else args.max_capture


def _start_metrics(args, options, recorder):
    """--metrics-port: serve the run's metrics (tracer/metrics.py); the port in use is one line."""
    if args.metrics_port is None:
        return None
    from trace_quit.tracer import metrics

    try:
        header = metrics.header_for(options, attached_pid=getattr(args, "pid", None))
        server = metrics.serve(header, args.metrics_addr, args.metrics_port)
    except metrics.MetricsError as exc:
        raise CliError(str(exc), EX_UNAVAILABLE) from None
    recorder.observers.append(server.exporter)
    return server


def _stop_metrics(server, args):
    if server is not None:
        server.linger(args.metrics_linger)
        server.close()


def _remove_unstarted_capture(path):
    """Remove a capture of a program that never started (it records nothing of use)."""
    try:
        from trace_quit.analysis.capture import load

        if not any(e.get("k") == "child_start" for e in load(path).events):
            os.unlink(path)
    except Exception:
        pass


def _divert_stdout():
    """Point fd 1 at stderr (the child inherits it); returns the saved stdout fd."""
    sys.stdout.flush()
    saved = os.dup(1)  # not inheritable (PEP 446): the program never sees it
    os.dup2(2, 1)
    return saved


def _restore_stdout(saved):
    if saved is not None:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_run_report(result, fmt, force=False):
    """The report after a run, on stderr; nothing here changes the exit status (the program's)."""
    out = sys.stderr
    if not say(out, "\n"):
        return
    if fmt != "none":
        try:
            from trace_quit import analysis
            from trace_quit.analysis.capture import load

            report = analysis.build_report(load(result.capture))
            if fmt == "html":
                html_path = html_path_for(result.capture)
                write_report_file([report], "html", html_path, force=force,
                                  owner=(result.run_as.uid, result.run_as.gid))
                say(out, "trace-quit: HTML report: %s\n" % html_path)
            elif fmt == "json":  # stdout alone: `trace-quit --format json -- … > r.json`
                analysis.render([report], fmt, stream=sys.stdout)
            else:
                analysis.render([report], fmt, stream=out, color=out.isatty())
        except TraceQuitError as exc:
            err(str(exc))
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):  # our stderr is gone: nothing to say it on
                silence(out)
                return
            err("the report could not be written (%s); the capture is complete: %s" % (exc, result.capture))
        except Exception as exc:  # the capture is safe on disk: say so and point at it
            err("the report could not be built (%s); the capture is complete: %s" % (exc, result.capture))
    say(out, "trace-quit: capture written to %s\n" % result.capture)
    html_path = html_path_for(result.capture)
    if fmt == "html" or os.path.lexists(html_path):  # `report -o` refuses an existing file (73)
        say(out, "trace-quit: next: open %s in a browser, or: trace-quit report %s\n"
            % (shlex.quote(html_path), shlex.quote(result.capture)))
    else:
        say(out, "trace-quit: next: trace-quit report %s --format html -o %s\n"
            % (shlex.quote(result.capture), shlex.quote(html_path)))
