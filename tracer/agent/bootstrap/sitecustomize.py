"""trace-quit's bootstrap: load the agent, then chain the program's own ``sitecustomize``.

Python imports ``sitecustomize`` once at start-up, from the first directory on ``sys.path``
that has one. The tracer put this directory first, so this module must also import the
``sitecustomize`` the program would have loaded without us. Nothing here may raise or print.
"""


def _load_agent():
    import importlib.util
    import os
    import sys

    agent_dir = os.environ.get("TRACE_QUIT_AGENT_DIR")
    if not agent_dir or "_trace_quit_agent" in sys.modules:
        return
    init = os.path.join(agent_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "_trace_quit_agent", init, submodule_search_locations=[agent_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_trace_quit_agent"] = module
    spec.loader.exec_module(module)
    from _trace_quit_agent import runtime  # noqa: E402 (loaded by path above)

    runtime.install()


def _chain_sitecustomize():
    """Import the next ``sitecustomize`` on sys.path, as if this one did not exist."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    ours = sys.modules.get("sitecustomize")
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # The program's own sitecustomize failing is reported as Python would report it.
        sys.modules["sitecustomize"] = ours
        raise


def _leave_sys_path():
    """Take this directory off sys.path: the program sees the path it would have had.

    PYTHONPATH keeps it, so the program's own Python subprocesses load the agent too."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]


try:
    _load_agent()
except Exception:  # the agent never breaks the program it watches
    pass
try:
    _leave_sys_path()
except Exception:
    pass
_chain_sitecustomize()
