"""``trace-quit doctor``: the command; the checks themselves are tracer/doctor.py's."""

import argparse
import sys


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
