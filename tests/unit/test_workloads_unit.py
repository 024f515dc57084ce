"""The workloads' command line and plan, without a server."""

import subprocess
import sys

import pytest

from trace_quit.workloads import __main__ as cli
from trace_quit.workloads import engine_per_call, harness, hidden_threads, nullpool_scoped, shared_engine

NAMES = ["engine-per-call", "engine-per-call-gc-off", "shared-engine", "nullpool-scoped", "hidden-threads",
         "known-causes", "known-causes-pymysql", "engine-per-call-pymysql", "both-drivers-pymysql",
         "known-causes-drivers"]


def run(*argv):
    return subprocess.run([sys.executable, "-m", "trace_quit.workloads"] + list(argv),
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_listing_names_every_workload():
    proc = run("--help")
    assert proc.returncode == 0
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == NAMES == list(cli.WORKLOADS)


def test_no_name_lists_and_fails_unknown_name_fails():
    assert run().returncode == 2
    proc = run("engine-per-kall")
    assert proc.returncode == 2 and "unknown workload 'engine-per-kall'" in proc.stderr


def test_every_module_docstring_says_what_is_expected():
    for module in (engine_per_call, shared_engine, nullpool_scoped, hidden_threads,
                   __import__("trace_quit.workloads.engine_per_call_gc_off", fromlist=["x"])):
        assert "Expected" in module.__doc__, module.__name__


def test_nullpool_refuses_pool_options_before_starting_anything():
    proc = run("nullpool-scoped", "--pool-size", "3", "--dsn", "mysql://u:p@127.0.0.1:1/x")
    assert proc.returncode == 2 and "--pool-size does not apply to NullPool" in proc.stderr


def test_bad_dsn_is_refused_with_its_password_hidden():
    proc = run("shared-engine", "--dsn", "postgres://u:topsecret@h/db", "--tasks", "1")
    assert proc.returncode == 2 and "topsecret" not in proc.stderr + proc.stdout


def test_gc_threshold_takes_one_to_three_numbers():
    proc = run("engine-per-call", "--gc-threshold", "1", "2", "3", "4", "--dsn", "mysql://u@h/d")
    assert proc.returncode == 2 and "1 to 3 numbers" in proc.stderr
    proc = run("engine-per-call", "--gc-threshold", "lots", "--dsn", "mysql://u@h/d")
    assert proc.returncode == 2 and "or 'python'" in proc.stderr


def test_engine_per_call_runs_with_the_studys_gc_thresholds_unless_told_otherwise():
    # The study ran CPython 3.10: (700, 10, 10) on every Python, 3.13's (2000, 10, 10) included.
    assert parse(engine_per_call).gc_threshold == ["700", "10", "10"]
    assert parse(engine_per_call, "--gc-threshold", "python").gc_threshold == ["python"]
    assert parse(shared_engine).gc_threshold is None  # the others keep the interpreter's
    # ... set before SQLAlchemy is imported too (workloads/__main__.py), the same values.
    assert cli.STUDY_GC == {"engine-per-call": engine_per_call.GC_THRESHOLD}
    assert "700 10 10" in " ".join(harness.build_parser("x", engine_per_call).format_help().split())


def parse(module, *argv):
    return harness.build_parser("x", module).parse_args(list(argv))


def test_defaults_are_the_studys():
    args = parse(engine_per_call)
    assert (args.tasks, args.workers, args.task_seconds, args.hold_seconds) == (500, 20, [1.0, 3.0], 1.0)
    assert harness.pool_options(args) == {"pool_recycle": 10}
    assert parse(hidden_threads).workers == 10 and parse(hidden_threads).subscribers == 2


def test_pool_options_pass_through():
    args = parse(shared_engine, "--pool-size", "2", "--max-overflow", "0", "--pool-recycle", "5")
    assert harness.pool_options(args) == {"pool_recycle": 5, "pool_size": 2, "max_overflow": 0}


def test_plan_is_reproducible_from_the_seed_and_within_bounds():
    args = parse(engine_per_call, "--tasks", "200", "--task-seconds", "3", "1", "--seed", "42")
    plan = harness.make_plan(args)
    assert plan == harness.make_plan(args)
    assert len(plan) == 200
    assert all(1.0 <= s <= 3.0 and 1 <= u <= 100 for s, u in plan)
    assert len({u for _, u in plan}) > 50
    assert plan != harness.make_plan(parse(engine_per_call, "--tasks", "200", "--seed", "43"))


@pytest.mark.parametrize("module", [engine_per_call, hidden_threads])
def test_create_engine_is_on_one_line_in_get_db_session(module):
    import inspect

    lines = inspect.getsource(module.get_db_session).splitlines()
    calls = [line for line in lines if "create_engine(" in line]
    assert len(calls) == 1 and calls[0].strip().startswith("engine = create_engine(URL, pool_recycle=")


@pytest.mark.parametrize("name,argv,expected", [
    ("engine-per-call", [], (700, 10, 10)),
    ("engine-per-call", ["--gc-threshold", "python"], None),
    ("engine-per-call", ["--gc-threshold", "5", "6", "--tasks", "1"], (5, 6)),
    ("shared-engine", [], None),
])
def test_the_thresholds_are_set_before_the_workload_imports_sqlalchemy(name, argv, expected):
    # On 3.13 the imports under (2000, 10, 10) change which objects are old when the run starts.
    code = ("import gc, sys; own = gc.get_threshold(); from trace_quit.workloads import __main__ as m, harness; "
            "m._early_gc_threshold(sys.argv[1], sys.argv[2:]); "
            "print(gc.get_threshold(), harness.INTERPRETER_THRESHOLDS == own, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, name] + argv, capture_output=True, text=True, check=True).stdout
    import gc

    want = gc.get_threshold() if expected is None else tuple(expected) + gc.get_threshold()[len(expected):]
    assert out.split(")")[0] + ")" == str(want) and out.split(")")[1].split() == ["True", "False"]
