"""The in-process agent: Python-side events from inside the traced program.

The tracer puts ``bootstrap/`` first on the child's ``PYTHONPATH``; its ``sitecustomize``
loads this package under the private name ``_trace_quit_agent`` (so it never collides with
the program's own modules, nor needs trace-quit installed in the program's interpreter)
and calls ``runtime.install()``. Everything here is stdlib only and Python 3.8+.

Host side (the tracer): ``child_env()`` gives the environment that activates the agent.
"""

import os

#: The FIFO the agent writes its event lines to (opened by path, so spawned children find it).
ENV_CHANNEL = "TRACE_QUIT_CHANNEL"
#: Set by the tracer to the agent package's directory (the bootstrap loads it from there).
ENV_AGENT_DIR = "TRACE_QUIT_AGENT_DIR"

AGENT_DIR = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAP_DIR = os.path.join(AGENT_DIR, "bootstrap")
EVENTS_PY = os.path.join(os.path.dirname(AGENT_DIR), "events.py")


def child_env(env, channel_path):
    """Return a copy of ``env`` that loads the agent and sends its events to ``channel_path``."""
    env = dict(env)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + old if old else "")
    env[ENV_CHANNEL] = channel_path
    env[ENV_AGENT_DIR] = AGENT_DIR
    return env
