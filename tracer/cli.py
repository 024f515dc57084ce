"""trace-quit's command line: run · report · doctor · demo · dump (the exit codes below are its contract).

Each subcommand is a small class with ``prepare_parser(parser)`` and ``run(args) -> int``;
its docstring is its help. ``main(argv)`` turns every ``TraceQuitError`` (tracer/errors.py)
into one line on stderr and its exit code, in one place — never a traceback.

Exit codes: a traced run exits with the program's own status (128+N for signal N), also
when our stderr is gone or the capture's disk filled up (one line says what was lost);
a stop signal before the program started gives 128+N too; before the program starts:
2 usage, 126 not runnable, 127 not found, 69 eBPF unavailable, 77 needs root, 73 output
exists or cannot be created; report/dump: 65 not a readable capture (or not a regular
file), 66 no such file, 73 output exists.
"""

import argparse
import errno
import math
import os
import shlex
import signal
import sys
import textwrap

from trace_quit.tracer import __version__

from trace_quit.tracer.errors import (EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_NOPERM,  # noqa: F401
                                      EX_NOTFOUND, EX_NOTRUNNABLE, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE,
                                      TraceQuitError)

CAPTURE_SUFFIX = ".tqcap"


class CliError(TraceQuitError):
    """A user-facing error: one sentence saying what is wrong and what to do."""

    def __init__(self, message, code):
        super().__init__(message, code)


def _say(stream, text):
    """Write to our stderr/stdout; once it is gone (``… 2>&1 | head -c1``) stay silent.

    Losing our own messages must never change the exit status, which is the program's
    (tests/integration/test_trust_cli.py::test_closed_stderr_keeps_the_programs_status)."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):
        _silence(stream)
        return False


def _silence(stream):
    """Point the dead stream's fd at /dev/null: the interpreter's last flush then succeeds (no exit 120)."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _err(message):
    from trace_quit.tracer.terminal import escape

    # Notes may quote what the program wrote (a rejected line's reason): data on the terminal.
    _say(sys.stderr, "trace-quit: %s\n" % escape(message))


# --- run ------------------------------------------------------------------------------

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
        parser.add_argument("--duration", type=_duration, help="--pid: stop after this long (10m, 90s, 1h)")
        parser.add_argument("--max-capture", type=_size, default=None, metavar="SIZE",
                            help="bound the capture (500M, 2G, 64K; 0: unbounded; default 1G): past it, "
                                 "events are counted in the trailer instead of written")
        parser.add_argument("--inject-timeout", type=_seconds, default=None, metavar="SECONDS",
                            help="--pid: give up injecting the agent after this long (default 5)")
        parser.add_argument("--format", choices=("text", "json", "html", "none"), default="text",
                            help="report printed after the run (default: text); html is written next to the capture")
        parser.add_argument("--quiet", action="store_true", help="no live status line")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="serve Prometheus metrics (OpenMetrics) on this port while it runs")
        parser.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                            help="address the metrics endpoint binds to (default: 127.0.0.1, loopback only)")
        parser.add_argument("--metrics-linger", type=_seconds, default=0.0, metavar="SECONDS",
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
            from trace_quit.tracer.bpf.session import dump_program

            sys.stdout.write(dump_program(bpf.resolve_targets(argv, dict(os.environ))))
            return 0
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
        _check_output(output, args.force)
        if args.format == "html":  # the page goes next to the capture: it obeys --force too
            _check_output(html_path_for(output), args.force)
        targets = None
        if use_bpf:
            from trace_quit.tracer.bpf.session import start_compile

            start_compile()  # the probes compile while the command is resolved (start-up)
            targets = _resolve_bpf_targets(argv, run_as, getattr(args, "cwd", None))
            if getattr(targets, "nothing_to_probe", None):
                # Not an error: the program still runs (and the agent still loads into any Python it starts).
                _err("no eBPF probes: %s; running it with the in-process agent only" % targets.nothing_to_probe)
                use_bpf, targets = False, None
        options = RunOptions(argv=argv, output=output, force=args.force, bpf=use_bpf,
                             agent=not args.no_agent, dsn=args.dsn, sample_user=args.sample_user,
                             run_as=run_as, status=not args.quiet, max_capture=_max_capture(args),
                             cwd=getattr(args, "cwd", None))
        recorder = Recorder(options, bpf_targets=targets, on_note=lambda text: _err(text))
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
        if result.capture_error:
            _err(result.capture_error + "; the program's exit status follows")
            _stop_metrics(metrics_server, args)
            return result.exit_status
        if result.interrupted is not None:
            _err("interrupted by %s while starting: the program was not run; the capture %s says so"
                 % (signal.Signals(result.interrupted).name, result.capture))
            _stop_metrics(metrics_server, args)
            return result.exit_status
        _print_run_report(result, args.format, force=args.force)
        _stop_metrics(metrics_server, args)
        return result.exit_status


    def run_attached(self, args, argv):
        """--pid: the eBPF layer on a process we did not start."""
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
            cmdline = _proc_cmdline(args.pid)
        except OSError:
            raise CliError("no process %d: check the pid (ps -p %d)" % (args.pid, args.pid), EX_NOINPUT) from None
        from trace_quit.tracer import attach

        try:
            py_target = attach.check_pid(args.pid)  # not Python, a zombie, ourselves: one line each
        except attach.AttachError as exc:
            raise CliError(str(exc), exc.code) from None
        output = args.output or default_capture_name(cmdline or ["pid%d" % args.pid])
        _check_output(output, args.force)
        if args.format == "html":
            _check_output(html_path_for(output), args.force)
        targets = _resolve_running_targets(args.pid, cmdline)
        options = RunOptions(argv=cmdline, output=output, force=args.force, bpf=True, agent=False, dsn=args.dsn,
                             sample_user=args.sample_user, run_as=RunAs.invoking_user(as_root=args.as_root),
                             status=not args.quiet, duration=args.duration, max_capture=_max_capture(args),
                             cwd=getattr(args, "cwd", None))
        recorder = attach.recorder_for(options, py_target, not args.no_agent, args.inject_timeout,
                                       bpf_targets=targets, on_note=lambda text: _err(text))
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
        if result.capture_error:
            _err(result.capture_error)
            _stop_metrics(metrics_server, args)
            return 0
        _print_run_report(result, args.format, force=args.force)
        _stop_metrics(metrics_server, args)
        return 0


def html_path_for(capture):
    """Where ``run --format html`` writes its page: next to the capture, never over it
    (``-o run.html`` gets ``run.report.html``: tests/unit/test_cli.py)."""
    base, ext = os.path.splitext(capture)
    page = base + ".html"
    if os.path.abspath(page) == os.path.abspath(capture):
        page = base + ".report.html"
    return page


def _check_output(path, force):
    """Refuse early (before anything runs) an output that exists, or whose directory does not."""
    from trace_quit.tracer.errors import OutputError, OutputExistsError

    if os.path.lexists(path) and not force:
        raise OutputExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError("cannot write %s: no directory %s (create it, or choose another -o)" % (path, directory))


def _start_metrics(args, options, recorder):
    """--metrics-port: serve the run's metrics (tracer/metrics.py); the port in use is one line."""
    if args.metrics_port is None:
        return None
    from trace_quit.tracer import metrics

    try:
        header = metrics.header_for(options, attached=getattr(args, "pid", None) is not None)
        server = metrics.serve(header, args.metrics_addr, args.metrics_port)
    except metrics.MetricsError as exc:
        raise CliError(str(exc), EX_UNAVAILABLE) from None
    recorder.observers.append(server.exporter)
    return server


def _stop_metrics(server, args):
    if server is not None:
        server.linger(args.metrics_linger)
        server.close()


def _duration(text):
    """--duration: seconds, or a number with s/m/h."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a duration (examples: 90s, 10m, 1h)" % text) from None
    # nan compares false with everything: a nan duration would never end (tests/unit/test_cli.py).
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%r is not a duration: give a finite one (examples: 90s, 10m, 1h)" % text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def _seconds(text):
    """--inject-timeout, --metrics-linger: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("%r is not a number of seconds (examples: 5, 0.5)" % text)
    return value


def _size(text):
    """--max-capture: bytes, or a number with K/M/G (binary units); 0 is unbounded."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    spelled = text.strip().lower()
    for suffix in ("ib", "b"):
        if spelled.endswith(suffix) and spelled[:-len(suffix)][-1:] in units:
            spelled = spelled[:-len(suffix)]
    try:
        if spelled[-1:] in units:
            value = float(spelled[:-1]) * units[spelled[-1]]
        else:
            value = float(spelled)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a size (examples: 500M, 2G, 64K; 0 for no bound)" % text) from None
    if not math.isfinite(value) or value >= 1 << 62:
        raise argparse.ArgumentTypeError("%r is not a size (examples: 500M, 2G, 64K; 0 for no bound)" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return int(value)


def _max_capture(args):
    """The bound in bytes: --max-capture, else the default (1 GiB)."""
    from trace_quit.tracer.capture import DEFAULT_MAX_BYTES

    return DEFAULT_MAX_BYTES if args.max_capture is None else args.max_capture


def _proc_cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]


def _resolve_running_targets(pid, cmdline):
    """Resolve probes for a running process: its own executable, environment, cwd and user."""
    try:
        from trace_quit.tracer import bpf
    except ImportError as exc:
        raise CliError("the eBPF layer cannot load (%s): run scripts/setup.sh" % exc, EX_UNAVAILABLE) from None
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        cwd = os.readlink("/proc/%d/cwd" % pid)
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = dict(item.decode("utf-8", "replace").split("=", 1)
                       for item in f.read().split(b"\0") if b"=" in item)
    except OSError as exc:
        raise CliError("cannot inspect process %d: %s" % (pid, exc.strerror), EX_NOPERM) from None
    # The path it was started by, when that is the same binary: a venv's python is a symlink
    # whose location (not the binary's) decides sys.prefix, hence where MySQLdb is found.
    from trace_quit.tracer.attach.target import other_root
    from trace_quit.tracer.bpf.running import resolve_running

    elsewhere = other_root(pid)
    invoked = None if elsewhere else _invoked_path(cmdline[0] if cmdline else "", env, cwd)
    if invoked and os.path.realpath(invoked) == os.path.realpath(exe):
        exe = invoked
    try:
        # Read from its maps and files, never by running its interpreter (it could be anything
        # its user wrote, or a chroot's): tracer/bpf/running.py.
        return resolve_running(pid, [exe] + cmdline[1:], env, cwd, exe, elsewhere)
    except bpf.BpfUnavailable as exc:
        raise CliError(str(exc), EX_UNAVAILABLE) from None
    except (OSError, bpf_elf_error()) as exc:
        raise CliError("cannot read the files of process %d: %s" % (pid, getattr(exc, "strerror", None) or exc),
                       EX_UNAVAILABLE) from None


def bpf_elf_error():
    from trace_quit.tracer.bpf.elf import ElfError

    return ElfError


def _invoked_path(arg0, env, cwd):
    import shutil

    if not arg0:
        return None
    if os.sep in arg0:
        return os.path.normpath(os.path.join(cwd, arg0))
    return shutil.which(arg0, path=env.get("PATH", os.defpath))


def _check_runnable(program):
    import shutil

    if os.sep in program:
        if not os.path.exists(program):
            raise CliError("%s: no such file" % program, EX_NOTFOUND)
        if not os.access(program, os.X_OK) or os.path.isdir(program):
            raise CliError("%s is not an executable program" % program, EX_NOTRUNNABLE)
    elif shutil.which(program) is None:
        raise CliError("%s: command not found (check the name and your PATH)" % program, EX_NOTFOUND)


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


def _resolve_bpf_targets(argv, run_as, cwd):
    from trace_quit.tracer.program import resolve_bpf_targets

    return resolve_bpf_targets(argv, run_as, cwd=cwd)


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
    if not _say(out, "\n"):
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
                _say(out, "trace-quit: HTML report: %s\n" % html_path)
            elif fmt == "json":  # stdout alone: `trace-quit --format json -- … > r.json`
                analysis.render([report], fmt, stream=sys.stdout)
            else:
                analysis.render([report], fmt, stream=out, color=out.isatty())
        except TraceQuitError as exc:
            _err(str(exc))
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):  # our stderr is gone: nothing to say it on
                _silence(out)
                return
            _err("the report could not be written (%s); the capture is complete: %s" % (exc, result.capture))
        except Exception as exc:  # the capture is safe on disk: say so and point at it
            _err("the report could not be built (%s); the capture is complete: %s" % (exc, result.capture))
    _say(out, "trace-quit: capture written to %s\n" % result.capture)
    html_path = html_path_for(result.capture)
    if fmt == "html" or os.path.lexists(html_path):  # `report -o` refuses an existing file (73)
        _say(out, "trace-quit: next: open %s in a browser, or: trace-quit report %s\n"
             % (shlex.quote(html_path), shlex.quote(result.capture)))
    else:
        _say(out, "trace-quit: next: trace-quit report %s --format html -o %s\n"
             % (shlex.quote(result.capture), shlex.quote(html_path)))


# --- report / dump ----------------------------------------------------------------------

def _check_capture_path(path):
    """A capture is a regular file: a FIFO or a device would block or never end (one line instead)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError("%s: no such capture file" % path, EX_NOINPUT) from None
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror), EX_NOINPUT) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "not a regular file")
        raise CliError("%s is %s, not a capture file: give the .tqcap file trace-quit wrote" % (path, kind), EX_DATAERR)


def _load_capture(path):
    from trace_quit.analysis.capture import CaptureError, load

    _check_capture_path(path)
    try:
        return load(path)
    except CaptureError as exc:
        raise CliError(str(exc), EX_DATAERR) from None


class ReportCommand:
    """Explain one or more captures (several: side by side).

    examples:
      trace-quit report trace-quit-main.1234.tqcap
      trace-quit report run.tqcap --format html -o run.html
      trace-quit report exp1.tqcap exp2.tqcap exp3.tqcap --format html -o compare.html
    """

    name = "report"

    def prepare_parser(self, parser):
        parser.add_argument("captures", nargs="+", metavar="CAPTURE")
        parser.add_argument("--format", choices=("text", "json", "html", "perfetto"), default="text")
        parser.add_argument("-o", "--output", help="write the report here instead of standard output")
        parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")

    def run(self, args):
        from trace_quit import analysis

        captures = [_load_capture(path) for path in args.captures]
        for capture in captures:
            if capture.status != "complete":
                _err("%s is %s: reporting what was recorded up to there" % (capture.path, capture.status))
        reports = [analysis.build_report(capture) for capture in captures]
        if args.format == "html" and not args.output:
            args.output = html_path_for(args.captures[0])
        if args.output:
            _check_not_a_capture(args.output, args.captures)
            write_report_file(reports, args.format, args.output, force=args.force, owner=_sudo_owner())
            _err("report written to %s" % args.output)
        else:
            analysis.render(reports, args.format, stream=sys.stdout, color=sys.stdout.isatty())
        return 0


def _check_not_a_capture(output, captures):
    """A report never replaces a capture it explains, --force or not (tests/unit/test_cli.py)."""
    for capture in captures:
        same = os.path.abspath(output) == os.path.abspath(capture)
        try:
            same = same or os.path.samefile(output, capture)
        except OSError:
            pass
        if same:
            raise CliError("-o %s is the capture being reported: choose another -o" % output, EX_CANTCREAT)


def write_report_file(reports, fmt, path, force=False, owner=None):
    """Render ``reports`` and write them whole into a 0600 file owned by ``owner`` (tracer/files.py)."""
    from trace_quit import analysis

    analysis.render(reports, fmt, path=path, color=False, force=force, owner=owner)


def _sudo_owner():
    if os.geteuid() == 0 and os.environ.get("SUDO_UID"):
        uid = int(os.environ["SUDO_UID"])
        return uid, int(os.environ.get("SUDO_GID", uid))
    return None


class DumpCommand:
    """Print every record of a capture, one JSON object per line (for debugging)."""

    name = "dump"

    def prepare_parser(self, parser):
        parser.add_argument("capture", metavar="CAPTURE")

    def run(self, args):
        import json

        from trace_quit.analysis.capture import CaptureError, iter_records

        _check_capture_path(args.capture)
        out = sys.stdout
        try:
            for record in iter_records(args.capture):  # streams: a huge capture is not loaded
                if record.get("k") in ("damaged", "partial") and set(record) == {"k", "line"}:
                    _err("%s: %s from line %d on" % (args.capture, "damaged" if record["k"] == "damaged"
                                                      else "a cut-off last line (truncated)", record["line"]))
                    break
                out.write(json.dumps(record, sort_keys=True) + "\n")
        except CaptureError as exc:
            raise CliError(str(exc), EX_DATAERR) from None
        return 0


# --- doctor / demo ----------------------------------------------------------------------

class DoctorCommand:
    """Check what works on this machine, and say how to fix what does not."""

    name = "doctor"

    def prepare_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--python", default=None, help="the Python the program will use (default: the "
                            "command's, else python3 on PATH)")
        parser.add_argument("-v", "--verbose", action="store_true", help="technical details (probe offsets, headers)")
        parser.add_argument("program", nargs=argparse.REMAINDER, help="-- the program you will trace (its Python "
                            "is the one checked)")

    def run(self, args):
        from trace_quit.tracer import doctor

        command = list(args.program)
        if command and command[0] == "--":
            command = command[1:]
        checks = doctor.run_checks(python=args.python, command=command)
        if args.json:
            import json

            sys.stdout.write(json.dumps(checks, indent=2) + "\n")
        else:
            _print_checks(checks, args.verbose)
        essential = [c for c in checks if c.get("essential", True)]
        return 0 if all(c["ok"] for c in essential) else 1


def _print_checks(checks, verbose):
    """One line per check; optional ones say so; the fix under a failure; jargon only with --verbose."""
    out = sys.stdout
    for check in checks:
        mark = "ok  " if check["ok"] else ("FAIL" if check.get("essential", True) else "miss")
        name = check["name"] + ("" if check.get("essential", True) else " (optional)")
        out.write("%s %-31s %s\n" % (mark, name, check.get("detail", "")))
        if not check["ok"] and check.get("fix"):
            out.write("     %-31s fix: %s\n" % ("", check["fix"]))
        if verbose and check.get("more"):
            out.write("     %-31s %s\n" % ("", check["more"]))
    failed = [c["name"] for c in checks if not c["ok"] and c.get("essential", True)]
    out.write("\n%s\n" % ("essential checks failed: %s (exit status 1)" % ", ".join(failed) if failed else
                            "every essential check passed; 'miss' marks optional ones (fewer details in reports)"))


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
        from trace_quit.tracer import demo

        return demo.run_demo(args.experiment, args.out, bpf=not args.no_bpf,
                             workload_args=getattr(args, "passthrough", []), fail=CliError)


COMMANDS = [RunCommand(), ReportCommand(), DoctorCommand(), DemoCommand(), DumpCommand()]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="trace-quit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Why did the MySQL client send COM_QUIT? close(), refcount, the cyclic GC "
                    "(which generation, which collection) or interpreter shutdown — confirmed in "
                    "the kernel by eBPF and explained in Python terms.",
        epilog=textwrap.dedent("""\
            examples:
              sudo trace-quit -- python main.py
              trace-quit report trace-quit-main.1234.tqcap --format html -o report.html
              sudo trace-quit demo
              trace-quit doctor
            """))
    parser.add_argument("--version", action="version", version="trace-quit " + __version__)
    sub = parser.add_subparsers(dest="subcommand", metavar="{run,report,doctor,demo,dump}")
    for command in COMMANDS:
        doc = command.__doc__
        summary = doc.strip().split("\n")[0]
        p = sub.add_parser(command.name, help=summary, description=textwrap.dedent(doc),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.prepare_parser(p)
        p.set_defaults(command=command) if command.name != "run" else p.set_defaults(command_obj=command)
    return parser


def _start_cwd():
    """Where the user stood when they typed the command (None if it is gone)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def main(argv=None):
    # Read first, before anything could run beside us: the program runs here and every path
    # the user gave means what it means here (tests/acceptance/test_readme_commands.py).
    cwd = _start_cwd()
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {c.name for c in COMMANDS}
    if argv and argv[0] not in names and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")  # `trace-quit [options] -- CMD` is `trace-quit run [options] -- CMD`
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return EX_USAGE
    if argv[0] == "run" and "--" not in argv and len(argv) > 1 and not set(argv[1:]) & {"-h", "--help", "--pid"} \
            and not any(a.startswith("--pid=") for a in argv):
        _err("put -- between trace-quit's options and the program, as in: trace-quit [options] -- python main.py")
        return EX_USAGE
    passthrough = []
    if argv[0] == "demo" and "--" in argv:  # the demo's workload options follow --
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    args.passthrough = passthrough
    args.cwd = cwd
    command = getattr(args, "command_obj", None) if args.subcommand == "run" else args.command
    try:
        return command.run(args)
    except TraceQuitError as exc:  # every intended error, mapped here once
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # `trace-quit report … | head`: the reader had enough
        _silence(sys.stdout)
        return 0
    except Exception as exc:  # a bug of ours: one line, the details on request
        if os.environ.get("TRACE_QUIT_DEBUG"):
            raise
        _err("internal error: %s: %s (set TRACE_QUIT_DEBUG=1 for the traceback, and please report it)"
             % (type(exc).__name__, exc))
        return EX_SOFTWARE
    except BaseException as exc:
        from trace_quit.tracer.signals import Interrupted

        if not isinstance(exc, Interrupted):
            raise
        _err("interrupted by %s before the program started: it was not run" % signal.Signals(exc.signum).name)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
