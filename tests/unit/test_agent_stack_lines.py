"""The agent's call stacks: line numbers worked out from ``f_lasti`` at flush equal ``f_lineno``.

The agent records (id(code), f_lasti) at a connection event and formats the line later
(tracer/agent/stacks.py ``Stacks.stack`` / ``_format_stack``), because reading ``f_lineno``
scans the line table each time. Each CPython of the matrix runs a program whose frames sit
on awkward lines (a call spread over lines, a loop, an except block, a generator, a
comprehension, a lambda) and compares the two for every frame; no server is needed.
"""

import json
import os
import subprocess
import textwrap

import pytest

from tq_support import AGENT_VERSIONS, REPO, cpython_param, venv_python_for

PROGRAM = textwrap.dedent('''
    import importlib.util, json, os, sys, types
    agent_dir = sys.argv[1]
    spec = importlib.util.spec_from_file_location(
        "_trace_quit_agent", os.path.join(agent_dir, "__init__.py"), submodule_search_locations=[agent_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_trace_quit_agent"] = module
    spec.loader.exec_module(module)
    from _trace_quit_agent import stacks

    agent = types.SimpleNamespace(getframe=sys._getframe, STACK_DEPTH=64, stack_cache={}, STACK_CACHE_MAX=16,
                                  line_of=stacks._line_of, dumps=json.dumps)
    seen = []

    def probe():
        truth = []
        frame = sys._getframe(1)
        while frame is not None:
            truth.append("%s:%d in %s" % (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
            frame = frame.f_back
        stack = stacks.Stacks.stack(agent, 1)  # from the caller of probe(), as truth
        strings, encoded = stacks.Stacks._format_stack(agent, stack)
        again = stacks.Stacks._format_stack(agent, stack)  # from the cache
        seen.append({"truth": truth, "agent": strings, "cached": again[0] == strings,
                     "encoded": json.loads(encoded) == strings})
        return 1

    def spread(a,
               b):
        return (a +
                b +
                probe())

    def looping():
        total = 0
        for i in range(2):
            if i:
                total += spread(
                    i,
                    2)
        return total

    def failing():
        try:
            raise ValueError("x")
        except ValueError:
            return [probe() for _ in range(1)]

    def generator():
        yield probe()
        yield (lambda: probe())()

    looping()
    failing()
    list(generator())
    print(json.dumps(seen))
''')


@pytest.mark.parametrize("version", [cpython_param(v) for v in AGENT_VERSIONS])
def test_stack_lines_from_f_lasti_equal_f_lineno(version, tmp_path):
    prog = tmp_path / "lines.py"
    prog.write_text(PROGRAM)
    out = subprocess.run([venv_python_for(version), str(prog), os.path.join(REPO, "tracer", "agent")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert len(seen) == 4
    for probe in seen:
        assert probe["agent"] == probe["truth"]
        assert probe["cached"] and probe["encoded"]
    # The frames named are the program's, with their lines (the spread call's is the call's line).
    assert [s.rsplit(" in ", 1)[1] for s in seen[0]["agent"]] == ["spread", "looping", "<module>"]
