"""trace-quit's subcommands, one a file: run · report · doctor · demo · dump.

Each is a small class with ``prepare_parser(parser)`` and ``run(args) -> int``; its docstring
is its help. tracer/cli.py assembles the parser and maps every error to its exit code;
common.py holds what several commands share (our own output, output and capture paths).
"""
