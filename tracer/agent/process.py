"""The traced process's own life as the agent sees it: start, fork, exec, os._exit and exit.

Nothing runs after exec or ``os._exit`` (no atexit handler): what is queued is written out
just before them; a forked child starts with an empty queue (its parent wrote its own out
before the fork) and says ``agent_start`` with its parent's pid; at exit the agent's handler,
registered first and so run last, marks every destruction after it as ``shutdown``.

``Process`` is a part of the ``Agent`` (runtime.py), which reaches it only through ``self``.
"""

import gc
import os
import sys

EXEC_FUNCTIONS = ("execv", "execve")  # os.execl*/execvp* reach these through os's globals


class Process:
    """The agent's handlers for exit, exec, os._exit and fork, and what it says of the process."""

    def _init_process(self):
        self.pid = os.getpid()
        self.finalizing = False  # past the agent's atexit handler: what dies now dies of shutdown

    def at_exit(self):
        """Registered first, so it runs after every other atexit handler: what dies after is shutdown.

        (Attached to a running program it was registered last and runs first: then shutdown
        is left to ``sys.is_finalizing()``, which turns true right after the last handler.)"""
        if not self.attached:
            self.finalizing = True
        self.exit_deadline = self.now() + self.EXIT_WAIT_NS
        self.flush()

    def before_exit(self):
        """Just before exec or os._exit: nothing runs after, so write everything out now."""
        try:
            if self.ident() not in self.collecting:
                self.exit_deadline = self.now() + self.EXIT_WAIT_NS
                self.flush()
                self.exit_deadline = 0   # exec can fail: the program goes on
        except Exception:
            pass

    def before_fork(self):
        """Write the buffer out in the parent, so the child starts with nothing of its parent's."""
        self.flush()

    def after_fork_in_child(self):
        """A forked child: own pid, empty queue (the parent wrote its own out)."""
        try:
            if self.stopped:
                return
            parent = self.pid
            self.pid = os.getpid()
            self.final_said = False
            self.exit_deadline = 0
            self.queue.clear()
            self.collecting.clear()
            self.flushing = set()  # a thread of the parent may have been writing
            self.emit(self.ev.AGENT_START, forked_from=parent, **self._process_info())
        except Exception:
            pass

    def _process_info(self):
        info = {"ppid": os.getppid(), "python": sys.version.split()[0], "executable": sys.executable,
                "argv": self.ev.redact_argv(list(sys.argv)), "basicsize": self.conn_offset,
                "gc_thresholds": list(gc.get_threshold()), "gc_enabled": gc.isenabled(),
                "implementation": sys.implementation.name}
        try:
            # How many generations the collector reports: with the thresholds, what decides the
            # collector (tracer/bpf/compat.collector), not the version alone.
            info["gc_generations"] = len(gc.get_stats())
        except Exception:
            pass
        if self.attached:
            # What the collector had done before we came, to explain its next collections.
            info["attached"] = True
            info["gc_counts"] = list(gc.get_count())
            try:
                info["gc_stats"] = gc.get_stats()
            except Exception:
                pass
        return info


def hook_exits(agent):
    """Write the buffer out before the process image goes: exec, and os._exit (no atexit)."""
    def wrap(name):
        original = getattr(os, name)

        def before_exit(*args, **kwargs):
            agent.before_exit()
            return original(*args, **kwargs)

        before_exit.__name__ = original.__name__
        before_exit.__qualname__ = original.__name__
        before_exit.__doc__ = original.__doc__
        before_exit.__wrapped__ = original
        setattr(os, name, before_exit)
        agent.restore.append((os, name, original, before_exit))

    for name in EXEC_FUNCTIONS + ("_exit",):
        if hasattr(os, name):
            wrap(name)
