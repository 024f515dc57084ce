"""The eBPF program: probes.c's text, its parameters, and its compile by bcc.

The text depends only on this machine (machine_defines: ring buffer size, tracepoint
offsets), so it compiles in the background while the command is resolved (start_compile);
what depends on the traced program goes into the `config` map at run time (program_config,
written by session.BpfSession). The compile always runs on a thread with a working directory
of its own (_compile_thread): bcc chdir()s into the kernel headers while it compiles.
"""

import ctypes
import importlib.resources
import os
import re
import threading
import time

from trace_quit.tracer.bpf import perf

#: Tracepoints: (category, name, BPF function, {-D name: format field}).
TRACEPOINTS = [
    ("task", "task_newtask", "on_newtask", {"TP_NEWTASK_PID": "pid", "TP_NEWTASK_FLAGS": "clone_flags"}),
    ("sched", "sched_process_exit", "on_exit", {"TP_EXIT_GROUP_DEAD": "group_dead"}),
    ("sock", "inet_sock_set_state", "on_sock_state", {
        "TP_SOCKSTATE_OLD": "oldstate", "TP_SOCKSTATE_NEW": "newstate", "TP_SOCKSTATE_PROTO": "protocol",
        "TP_SOCKSTATE_SKADDR": "skaddr"}),
    # A stop signal that reached the traced program itself (a kill of its process group): the
    # tracer does not forward its own copy a second time (signal_reached, tracer/record.py).
    ("signal", "signal_generate", "on_signal_generate", {"TP_SIGGEN_SIG": "sig", "TP_SIGGEN_PID": "pid"}),
]
_OPTIONAL_FIELDS = {"TP_EXIT_GROUP_DEAD"}  # missing on older kernels: fall back to tid == tgid

#: Ring buffer pages (4 KiB each, power of two). 8 MiB holds ~100k events: a quarter of a
#: second at 400k events/s (tests/bench/throughput.py), far more than a 20 ms drain sees.
RINGBUF_PAGES = 2048

#: probes.c's own includes (tracer/bpf/probes/*.h), put in place by probes_source.
_INCLUDE = re.compile(r'^#include "(probes/[\w.]+)"')


def probes_source():
    """The program's text: probes.c with each of its ``#include "probes/..."`` lines replaced by
    that file, from the installed package (never from the working directory).

    One text for bcc, as before the split: the compile reads no file of ours (the same time),
    --dump-bpf prints the whole program, and ``#line`` keeps clang's messages naming the file
    and line they are about. The kernel headers' ``#include <...>`` are left to bcc."""
    package = importlib.resources.files("trace_quit.tracer.bpf")
    out = []
    for number, line in enumerate(package.joinpath("probes.c").read_text().splitlines(True), 1):
        match = _INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        name = match.group(1)
        text = package.joinpath(*name.split("/")).read_text()
        out.append('#line 1 "%s"\n%s%s#line %d "probes.c"\n' % (
            name, text, "" if text.endswith("\n") else "\n", number + 1))
    return "".join(out)


def headers_info():
    """Which kernel headers bcc will compile against, and whether that is the mismatched fallback."""
    rel = os.uname().release
    build = "/lib/modules/%s/build" % rel
    info = {"kernel": rel, "build": None, "fallback": False, "ikheaders": os.path.exists("/sys/kernel/kheaders.tar.xz")}
    if os.path.exists(build):
        target = os.path.realpath(build)
        info["build"] = target
        base = os.path.basename(target.rstrip("/"))
        if rel not in base:
            info["fallback"] = True
            info["note"] = ("compiled against %s headers on kernel %s: acceptable, the uprobe programs only use "
                            "struct pt_regs (stable on x86-64) and tracepoint offsets read at run time" % (base, rel))
    return info


def tracepoint_defines():
    """-D flags for tracepoint field offsets, and the tracepoints that cannot be used."""
    defines, missing = {}, []
    for cat, name, fn, fields in TRACEPOINTS:
        try:
            fmt = perf.tracepoint_fields(cat, name)
        except perf.AttachError as exc:
            fmt = {}
            missing.append({"what": "%s:%s" % (cat, name), "why": str(exc)})
        for define, field in fields.items():
            if field in fmt:
                defines[define] = fmt[field][0]
            else:
                defines[define] = -1 if define in _OPTIONAL_FIELDS else 0
    return defines, missing


#: probes.c's `config` slots (CFG_*): what depends on the traced program, written at run time.
CONFIG = {"CONN_OFFSET": 0, "LAST_ERRNO_OFF": 1, "AFTER_ATEXIT": 2, "GC_SYM_GEN_REG": 3}
for _i, _part in enumerate(("KIND", "REG", "OFF", "SIZE", "SIGNED")):
    CONFIG["GC_START_ARG_" + _part] = 4 + _i
    CONFIG["GC_DONE_ARG_" + _part] = 9 + _i


def machine_defines(ringbuf_pages=RINGBUF_PAGES):
    """The -D parameters of probes.c: they depend on this machine only, not on the program."""
    defines = {"RINGBUF_PAGES": int(ringbuf_pages), "OWN_PT_REGS": 1}
    defines.update(tracepoint_defines()[0])
    return defines


def program_config(targets):
    """probes.c's `config` values for ``targets`` (no root, no bcc needed)."""
    config = {"CONN_OFFSET": int(targets.basicsize or 0),
              "LAST_ERRNO_OFF": -1 if targets.last_errno_offset is None else int(targets.last_errno_offset),
              "AFTER_ATEXIT": int(bool(getattr(targets, "after_atexit", False))), "GC_SYM_GEN_REG": -1}
    for prefix in ("GC_START_ARG_", "GC_DONE_ARG_"):
        config.update({prefix + "KIND": 0, prefix + "REG": 0, prefix + "OFF": 0, prefix + "SIZE": 8,
                       prefix + "SIGNED": 1})
    config.update((k, int(v)) for k, v in targets.gc_args.items() if k in CONFIG)
    return config


def dump_program(targets):
    """The program as bcc would compile it for ``targets``: cflags, config, then probes.c (--dump-bpf)."""
    flags = " ".join("-D%s=%d" % kv for kv in sorted(machine_defines().items()))
    config = " ".join("%s=%d" % kv for kv in sorted(program_config(targets).items()))
    return "// cflags: %s\n// config: %s\n%s" % (flags, config, probes_source())


def compile_probes(defines):
    """bcc.BPF for probes.c with ``defines`` (updated in place if the headers fallback is used).

    Always on a thread of its own whose working directory is its own: bcc's compile chdir()s
    into the kernel headers while it runs, and a working directory is shared by every thread
    of a process, so on the caller's thread (or in the background while the command is
    resolved) it moved the tracer's — and the traced program's — working directory
    (tests/acceptance/test_readme_commands.py runs every command from a project directory)."""
    job = {"defines": defines, "bpf": None, "error": None, "seconds": None}
    thread = _compile_thread(job)
    thread.start()
    thread.join()
    if job["error"] is not None:
        raise job["error"]
    return job["bpf"]


def _compile_thread(job):
    """A thread (not started) that compiles ``job["defines"]`` in a working directory of its own
    and leaves ``bpf`` or ``error``, and ``seconds``, in ``job``; never raises."""
    def run():
        t0 = time.monotonic()
        try:
            _own_working_directory()  # bcc's chdir() stays on this thread
            job["bpf"] = _compile_here(job["defines"])
        except BaseException as exc:
            job["error"] = exc
        job["seconds"] = round(time.monotonic() - t0, 4)

    return threading.Thread(target=run, name="trace-quit-compile", daemon=True)


#: unshare(2)'s flag: this thread stops sharing its root, working directory and umask.
CLONE_FS = 0x00000200


def _own_working_directory():
    """Give the calling thread a working directory of its own (Linux: unshare(CLONE_FS)).

    A chdir() on this thread then moves nobody else's; the thread starts in the directory the
    process is in. Raises OSError if the kernel refuses (then nothing may be compiled here)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "unshare(CLONE_FS): %s" % os.strerror(err))


def _compile_here(defines):
    """The compile itself, on the calling thread (which must own its working directory)."""
    import bcc  # the one place bcc is imported (BpfSession checks it first, with the fix)

    def cflags():
        return ["-D%s=%d" % kv for kv in sorted(defines.items())]

    try:
        return bcc.BPF(text=probes_source().encode(), cflags=cflags())
    except Exception:
        # Headers that already define struct pt_regs: use theirs (probes/common.h, OWN_PT_REGS).
        defines["OWN_PT_REGS"] = 0
        return bcc.BPF(text=probes_source().encode(), cflags=cflags())


_early = {}     # {"job": the compile start_compile() began: {"defines", "thread", "bpf", "error", "seconds"}}


def start_compile(ringbuf_pages=RINGBUF_PAGES):
    """Begin compiling probes.c in the background now (start-up: it takes most of it).

    The program text depends only on the machine (machine_defines), so the compile runs while
    the command is resolved; BpfSession takes it if its parameters match, else compiles again.
    bcc's compile is C code called through ctypes, which lets the resolving thread run.
    Never raises: a failure here is found again, and explained, by BpfSession.
    """
    if _early or os.geteuid() != 0:
        return
    try:
        defines = machine_defines(ringbuf_pages)
    except Exception:
        return
    job = {"defines": defines, "bpf": None, "error": None, "seconds": None}
    job["thread"] = _compile_thread(job)
    _early["job"] = job
    job["thread"].start()


def take_early(defines):
    """The early compile's BPF object if it was made with ``defines``, else None (discarded)."""
    if not _early:
        return None, None
    job = _early.pop("job")
    job["thread"].join()
    if job["bpf"] is not None and job["defines"] == defines:
        return job["bpf"], job["seconds"]
    if job["bpf"] is not None:
        job["bpf"].cleanup()
    return None, None
