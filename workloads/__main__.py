"""``python -m trace_quit.workloads NAME [options]``: run one of the workloads (the incident, its fixes, known causes).

``python -m trace_quit.workloads`` (or ``--help``) lists them; ``NAME --help`` gives the
options of one. Without ``--dsn`` a workload starts a disposable server for its run.
"""

import importlib
import sys

#: name -> module (contract: these names are used by the tracer's demo, tests and users).
WORKLOADS = {
    "engine-per-call": "engine_per_call",
    "engine-per-call-gc-off": "engine_per_call_gc_off",
    "shared-engine": "shared_engine",
    "nullpool-scoped": "nullpool_scoped",
    "hidden-threads": "hidden_threads",
    "known-causes": "known_causes",
    "known-causes-pymysql": "known_causes_pymysql",
    "engine-per-call-pymysql": "engine_per_call_pymysql",
    "both-drivers-pymysql": "both_drivers_pymysql",
    "known-causes-drivers": "known_causes_drivers",
}

PROG = "python -m trace_quit.workloads"


def usage():
    lines = ["usage: %s NAME [options]   (NAME --help for its options)" % PROG, "", "workloads:"]
    for name, module in WORKLOADS.items():
        lines.append("  %-24s %s" % (name, _summary(module)))
    lines.append("")
    lines.append("Without --dsn, the experiments start a disposable MariaDB/MySQL server for the run.")
    return "\n".join(lines) + "\n"


def _summary(module):
    """The first line of a workload module's docstring, without importing it (no SQLAlchemy needed)."""
    import ast
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), module + ".py")
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(": ", 1)[1] if ": " in first else first


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    name = argv.pop(0)
    if name not in WORKLOADS:
        sys.stderr.write("%s: unknown workload %r; choose one of: %s\n"
                         % (PROG, name, ", ".join(WORKLOADS)))
        return 2
    _early_gc_threshold(name, argv)
    module = importlib.import_module("trace_quit.workloads." + WORKLOADS[name])
    return module.main(argv)


#: Workloads that run with the study's collector thresholds unless told otherwise
#: (engine_per_call.GC_THRESHOLD; tests/unit/test_workloads_unit.py pins that they agree).
STUDY_GC = {"engine-per-call": (700, 10, 10)}


def _early_gc_threshold(name, argv):
    """Set the run's GC thresholds before the workload imports SQLAlchemy, as the study's 3.10 had
    them from its first import: with 3.13's (2000, 10, 10) during the imports, fewer objects
    reach generation 2 before the run, and its first full collection comes earlier and frees
    fewer Engines. harness.main applies (and validates) the same option again."""
    import gc

    from trace_quit.workloads import harness

    harness.INTERPRETER_THRESHOLDS = gc.get_threshold()
    values = list(STUDY_GC.get(name, ()))
    if "--gc-threshold" in argv:
        given = []
        for word in argv[argv.index("--gc-threshold") + 1:]:
            if not word.isdigit():
                break
            given.append(int(word))
        values = given if 1 <= len(given) <= 3 else []
    if values:
        gc.set_threshold(*values)


if __name__ == "__main__":
    sys.exit(main())
