"""trace-quit --pid's user-facing errors: one line, a distinct exit code each."""

EX_NOT_RUNNING = 66   # no such process (the same code --pid always used)
EX_NOPERM = 77        # another user's process without root: the needs-root message
EX_NOT_PYTHON = 79    # a process that runs no CPython
EX_ZOMBIE = 80        # it has exited; only its parent's wait() is missing
EX_OWN_TRACER = 81    # trace-quit itself
EX_STOPPED = 82       # stopped (SIGSTOP, job control, a debugger): it could not answer an injection


class AttachError(Exception):
    """The --pid given cannot be traced: ``str()`` is the one line to print, ``code`` the exit code."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class InjectError(Exception):
    """The agent could not be injected; the eBPF layer carries on alone. ``str()`` says why."""


class TargetDied(InjectError):
    """The target ended while trace-quit was attached: ``str()`` says when and how (the signal)."""

    def __init__(self, pid, when, how):
        super().__init__("process %d %s %s" % (pid, how, when))
        self.pid = pid
        self.how = how
