"""The program to trace, read from its command line: what the eBPF layer probes in it and
whether the agent can load in it (it loads through PYTHONPATH's sitecustomize)."""

import os

from trace_quit.tracer.errors import EX_UNAVAILABLE, TraceQuitError


def resolve_bpf_targets(argv, run_as, cwd=None):
    """What the eBPF layer will probe for ``argv`` run as ``run_as`` from ``cwd``; a TraceQuitError
    (69) when it cannot."""
    try:
        from trace_quit.tracer import bpf
    except ImportError as exc:
        raise TraceQuitError("the eBPF layer cannot load (%s): run scripts/setup.sh, or add --no-bpf" % exc,
                             EX_UNAVAILABLE) from None
    try:
        return bpf.resolve_targets(argv, dict(os.environ), run_as.uid, run_as.gid, cwd=cwd)
    except bpf.BpfUnavailable as exc:
        raise TraceQuitError(str(exc), EX_UNAVAILABLE) from None


def looks_like_python(argv):
    return bool(argv) and os.path.basename(argv[0]).startswith("python")


def missing_agent_reason(argv, loaded_elsewhere):
    """Why the program ran without the agent, or None when that is expected: a launcher (shell,
    make...) whose Python children loaded it (``loaded_elsewhere``)."""
    reason = why_no_agent(argv)
    if reason is None and not looks_like_python(argv):
        if loaded_elsewhere:
            return None
        reason = "no Python process that reads PYTHONPATH ran (the agent loads through sitecustomize)"
    return reason or "its Python never ran the agent's sitecustomize (PYTHONPATH changed?)"


def why_no_agent(argv):
    """Why this command line keeps the agent out (it loads through PYTHONPATH's sitecustomize), or None.

    Follows ``env`` (``-i``, ``-u PYTHONPATH``, ``PYTHONPATH=…``) to the interpreter and reads
    its flags (``-I``, ``-E``, ``-S``) up to the script, ``-c`` or ``-m``."""
    argv = list(argv)
    while argv and os.path.basename(argv[0]) == "env":
        i = 1
        while i < len(argv):
            arg = argv[i]
            if arg in ("-i", "--ignore-environment", "-"):
                return "env -i clears the environment, PYTHONPATH with it"
            if arg in ("-u", "--unset") and argv[i + 1:i + 2] == ["PYTHONPATH"] or arg == "--unset=PYTHONPATH":
                return "env -u PYTHONPATH removes the agent's path"
            if arg.startswith("PYTHONPATH="):
                return "the command sets PYTHONPATH itself, replacing the agent's"
            if arg in ("-u", "--unset", "-C", "--chdir", "-S", "--split-string"):
                i += 2
                continue
            if arg.startswith("-") or "=" in arg:
                i += 1
                continue
            break
        argv = argv[i:]
    if not looks_like_python(argv):
        return None
    for arg in argv[1:]:
        if not arg.startswith("-") or arg in ("-", "--") or arg.startswith("--"):
            break
        letters = arg[1:]
        for j, letter in enumerate(letters):
            if letter == "I":
                return "python -I ignores PYTHONPATH"
            if letter == "E":
                return "python -E ignores PYTHONPATH"
            if letter == "S":
                return "python -S skips sitecustomize, which loads the agent"
            if letter in "cmWXQ":  # the rest of the argument is this option's value
                break
        if letters[:1] in ("c", "m"):
            break
    return None
