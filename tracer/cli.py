"""trace-quit's command line: the parser and ``main()``; each subcommand is a file of tracer/commands/.

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
import os
import signal
import sys
import textwrap

from trace_quit.tracer import __version__
from trace_quit.tracer.commands.common import err, silence
from trace_quit.tracer.commands.demo import DemoCommand
from trace_quit.tracer.commands.doctor import DoctorCommand
from trace_quit.tracer.commands.dump import DumpCommand
from trace_quit.tracer.commands.report import ReportCommand
from trace_quit.tracer.commands.run import RunCommand
from trace_quit.tracer.errors import EX_SOFTWARE, EX_USAGE, TraceQuitError

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
        err("put -- between trace-quit's options and the program, as in: trace-quit [options] -- python main.py")
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
        err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BrokenPipeError:  # `trace-quit report … | head`: the reader had enough
        silence(sys.stdout)
        return 0
    except Exception as exc:  # a bug of ours: one line, the details on request
        if os.environ.get("TRACE_QUIT_DEBUG"):
            raise
        err("internal error: %s: %s (set TRACE_QUIT_DEBUG=1 for the traceback, and please report it)"
             % (type(exc).__name__, exc))
        return EX_SOFTWARE
    except BaseException as exc:
        from trace_quit.tracer.signals import Interrupted

        if not isinstance(exc, Interrupted):
            raise
        err("interrupted by %s before the program started: it was not run" % signal.Signals(exc.signum).name)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
