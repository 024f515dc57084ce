"""Resolve, before the traced command runs, the exact files and code sites to probe.

Uprobes are keyed by (file, offset) and attaching by path before the process maps a library
catches every later mapping (measured on this project's kernels), so everything is decided up front from the command
line, the environment and the user the program will run as:

1. the Python interpreter the command execs (PATH lookup, ``#!`` lines, ``/usr/bin/env``);
2. the file holding the interpreter's code: the executable itself when it is statically
   linked (Debian's /usr/bin/python3.11) or its ``libpython3.X.so`` (pyenv, python.org);
3. the ``MySQLdb/_mysql*.so`` that interpreter would import: we run the interpreter, as the
   target user, with a ``-c`` helper that calls ``importlib`` finders but never imports
   MySQLdb (no package code runs; ``site`` does, as it would for the program itself);
4. the client library (libmariadb / libmysqlclient) that module links: ``DT_NEEDED`` with
   ``DT_RPATH``/``DT_RUNPATH`` (``$ORIGIN``), ``LD_LIBRARY_PATH`` and ``/etc/ld.so.cache``,
   parsed here (we never run ``ldd`` on files we do not trust);
5. the probe sites: symbols from ``.symtab``/``.dynsym``, the GC's USDT notes or its
   collection function for the interpreter's version, and the offset of each uprobe
   (``x86.choose_probe_offset``);
6. what this build lets us attribute (compat.py): the collector (generations are ages only in
   a generational one), the object header, mysqlclient's connection layout.

Steps 1 and the guesses for non-Python commands live in command.py, step 4's search in
loader.py, step 5's sites and operands in sites.py; this module runs the helper and ties them.
"""

import dataclasses
import json
import os
import subprocess
import time

from trace_quit.tracer.bpf import compat
from trace_quit.tracer.bpf import elf as elflib
from trace_quit.tracer.bpf.errors import BpfUnavailable

# Split by job (re-exported here: callers and tests use resolve.X): following the command
# (command.py), the loader's search (loader.py), probe sites and operands (sites.py).
from trace_quit.tracer.bpf.command import (Command, _follow_quiet, _python_path0, follow_command,  # noqa: F401
                                           guess_interpreters)
from trace_quit.tracer.bpf.loader import find_defining, find_library  # noqa: F401
from trace_quit.tracer.bpf.sites import (GC_FUNCTIONS, PT_REGS, ProbeSite, _add_probe, _gc_symbol_sites,  # noqa: F401
                                         _site, _usdt_sites, last_errno_offset, parse_usdt_arg)


# The helper run inside the target interpreter. Python 3.6+ syntax; prints one JSON line.
# It fixes sys.path[0] to what the real command would get (script dir, cwd, or nothing with
# -I/-P) and asks the import system's finders for MySQLdb without executing it; the
# _mysql extension is located with PathFinder on the package's own search locations,
# which does not import the parent package either.
_HELPER = r"""
import gc, json, os, re, sys, sysconfig, importlib.util, importlib.machinery
path0 = json.loads(sys.argv[1])
if sys.path and sys.path[0] in ('', os.getcwd()):
    del sys.path[0]
if path0 is not None:
    sys.path.insert(0, path0)
out = {"version": list(sys.version_info[:3]), "executable": sys.executable,
       "basicsize": object.__basicsize__, "prefix": sys.prefix,
       "gil_disabled": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
       "instsoname": sysconfig.get_config_var("INSTSONAME"),
       "libdir": sysconfig.get_config_var("LIBDIR"),
       "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
       "mysqldb": None, "mysql_so": None, "mysqlclient_version": None,
       "gc_thresholds": list(gc.get_threshold()), "gc_generations": len(gc.get_stats())}
spec = importlib.util.find_spec("MySQLdb")
if spec is not None:
    out["mysqldb"] = spec.origin
    locs = list(spec.submodule_search_locations or [])
    sub = importlib.machinery.PathFinder.find_spec("MySQLdb._mysql", locs)
    if sub is not None:
        out["mysql_so"] = sub.origin
    for loc in locs:
        try:
            with open(os.path.join(loc, "release.py")) as f:
                m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
            if m:
                out["mysqlclient_version"] = m.group(1)
        except OSError:
            pass
print(json.dumps(out))
"""


@dataclasses.dataclass
class Targets:
    """Everything resolved about the command before it runs (paths, symbols, offsets, versions, notes)."""

    argv: list
    interpreter: str = None          # as the command will exec it (may be a venv symlink)
    interpreter_real: str = None     # realpath
    python_version: tuple = None
    libpython: str = None            # the file with the interpreter's code (exe if static)
    libpython_static: bool = None
    basicsize: int = 16              # object.__basicsize__: MYSQL* = id(conn) + basicsize
    gil_disabled: bool = False
    #: The interpreter's collector (compat.collector): generational | incremental | free-threaded
    #: | unknown; only a generational one's generation numbers are ages, and only those are read.
    gc_collector: str = None
    #: What the interpreter reported at start that decided it: {"thresholds", "generations"}.
    gc_reported: dict = dataclasses.field(default_factory=dict)
    #: What mysqlclient's _mysql says about its connection struct (compat.mysqlclient_layout).
    mysqlclient_layout: dict = dataclasses.field(default_factory=dict)
    mysqldb: str = None              # MySQLdb/__init__.py the interpreter would import
    mysql_so: str = None             # MySQLdb/_mysql*.so
    mysqlclient_version: str = None
    client_lib: str = None           # libmariadb / libmysqlclient real path (or mysql_so if static)
    client_soname: str = None
    gc_mode: str = None              # "usdt" | "symbol" | None
    gc_args: dict = dataclasses.field(default_factory=dict)  # -D parameters for the GC probes
    probes: list = dataclasses.field(default_factory=list)   # [ProbeSite]
    missing: list = dataclasses.field(default_factory=list)  # [{"what", "why"}]
    notes: list = dataclasses.field(default_factory=list)
    timings: dict = dataclasses.field(default_factory=dict)
    #: The command itself: {"path", "python": bool, "why"} (why it is not Python).
    command: dict = dataclasses.field(default_factory=dict)
    #: For a command that is not Python: every interpreter examined as a guess, with why
    #: ({"interpreter", "why", "python_version", "libpython", "mysql_so", "client_lib"}).
    guesses: list = dataclasses.field(default_factory=list)
    #: Client libraries probed and how each was found ({"path", "soname", "how"}).
    client_libs: list = dataclasses.field(default_factory=list)
    #: Offset of ``net.last_errno`` in MYSQL (from the library's mysql_errno), None if unknown.
    last_errno_offset: int = None
    #: Set (one sentence) when not a single uprobe could be placed: the eBPF layer has nothing
    #: to watch. The run should still go ahead; the caller decides whether to load anything.
    nothing_to_probe: str = None
    #: True when every interpreter's end of atexit handlers is probed (AFTER_ATEXIT): probes.c
    #: then starts "shutdown" there instead of at Py_FinalizeEx entry (-D AFTER_ATEXIT).
    after_atexit: bool = None

    def describe(self):
        """A JSON-able dict for the capture header."""
        d = dataclasses.asdict(self)
        d["probes"] = [p.describe() for p in self.probes]
        d["python_version"] = ".".join(map(str, self.python_version)) if self.python_version else None
        return d


def _run_helper(interp, pyargs, env, uid, gid, cwd):
    """Run the find_spec helper in the target interpreter as the target user; returns its dict."""
    path0, flags = _python_path0(pyargs, cwd)
    kwargs = {}
    if os.geteuid() == 0 and uid is not None and (uid != 0 or (gid not in (None, 0))):
        import pwd
        kwargs["user"] = uid
        kwargs["group"] = gid if gid is not None else uid
        try:
            kwargs["extra_groups"] = os.getgrouplist(pwd.getpwuid(uid).pw_name, kwargs["group"])
        except KeyError:
            kwargs["extra_groups"] = []
    try:
        r = subprocess.run([interp] + flags + ["-c", _HELPER, json.dumps(path0)], env=dict(env), cwd=cwd,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30, **kwargs)
    except PermissionError as exc:
        raise BpfUnavailable("user %s cannot run %s (%s); make it executable by that user or pass --as-root" % (
            uid, interp, exc.strerror))
    except (OSError, subprocess.SubprocessError) as exc:
        raise BpfUnavailable("could not run %s to locate MySQLdb (%s); check that it starts" % (interp, exc))
    lines = r.stdout.decode("utf-8", "replace").strip().splitlines()
    if r.returncode != 0 or not lines:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BpfUnavailable("%s failed while locating MySQLdb (%s); check that the interpreter starts" % (
            interp, err[-1] if err else "exit status %d" % r.returncode))
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise BpfUnavailable("%s printed something unexpected while locating MySQLdb; run it by hand to check" % interp)


def _add_client_probes(targets, client, how):
    """mysql_close (+return) and mysql_real_connect (+return) in client library ``client``."""
    real = os.path.realpath(client.path)
    if any(c["path"] == real for c in targets.client_libs):
        return
    soname = client.dynamic()["soname"] or os.path.basename(client.path)
    targets.client_libs.append({"path": real, "soname": soname, "how": how})
    if targets.client_lib is None:
        targets.client_lib, targets.client_soname = real, soname
    off = last_errno_offset(client)
    fn = "on_close"
    if off is None:
        targets.missing.append({"what": "mysql_errno in %s" % real,
                                "why": "net.last_errno offset not decodable: bpf_close.last_errno is None"})
        fn = "on_close_noerrno"
    elif targets.last_errno_offset is None:
        targets.last_errno_offset = off
    elif off != targets.last_errno_offset:
        targets.missing.append({"what": "last_errno in %s" % real, "why": "its MYSQL layout differs from %s's "
                                "(offset %#x, not %#x): bpf_close.last_errno is None there" % (
                                    targets.client_libs[0]["path"], off, targets.last_errno_offset)})
        fn = "on_close_noerrno"
    close = _site("close", fn, client, "mysql_close", "uprobe")
    if close is None:
        targets.missing.append({"what": "mysql_close", "why": "not in %s" % real})
        return
    _add_probe(targets, close)
    # Same offset: the stack pointer is untouched up to it (x86.py), so the return
    # address is still at (%rsp) and one emulated breakpoint serves both consumers.
    _add_probe(targets, dataclasses.replace(close, role="close_ret", fn="on_close_ret", how="uretprobe"))
    conn = _site("connect", "on_connect", client, "mysql_real_connect", "uprobe")
    if conn is None:
        targets.missing.append({"what": "mysql_real_connect", "why": "not in %s" % real})
    else:
        _add_probe(targets, conn)
        _add_probe(targets, dataclasses.replace(conn, role="connect_ret", fn="on_connect_ret", how="uretprobe"))


def _add_python(targets, interp, pyargs, env, uid, gid, cwd, primary, why=None):
    """Resolve one interpreter (libpython, GC sites, _mysql .so, client library) into ``targets``."""
    info = _run_helper(interp, pyargs, env, uid, gid, cwd)
    c = _follow_quiet([interp], env)
    if c is None or c.interpreter is None:
        # A wrapper that execs the real interpreter (pyenv shim): what it ran is sys.executable.
        if not info.get("executable"):
            raise BpfUnavailable("%s does not report its sys.executable" % interp)
        targets.notes.append("%s is a wrapper; probing the interpreter it runs, %s" % (interp, info["executable"]))
        interp = info["executable"]
    exe = elflib.Elf(os.path.realpath(interp))
    lib = None
    for name in exe.dynamic()["needed"]:
        if name.startswith("libpython"):
            lib = find_library(name, exe, env)
            if lib is None:
                raise BpfUnavailable("cannot find %s, which %s needs; check LD_LIBRARY_PATH" % (name, interp))
    libpython = os.path.realpath(lib or exe.path)
    pyelf = exe if lib is None else elflib.Elf(libpython)
    add_interpreter(targets, interp, info, pyelf, libpython, lib is None, env, primary, why)


def add_interpreter(targets, interp, info, pyelf, libpython, static, env, primary, why=None):  # noqa: C901
    """Everything after the interpreter is known: GC sites, shutdown, _mysql .so, client library.

    ``info`` is what the find_spec helper reports (a launched command), or the same facts read
    from a running process without executing anything (tracer/bpf/running.py)."""
    version = tuple(info["version"])
    if primary or targets.interpreter is None or (not targets.mysql_so and info.get("mysql_so")):
        # The interpreter the report talks about: the command's own, else the best guess.
        targets.interpreter = interp
        targets.interpreter_real = os.path.realpath(interp)
        targets.python_version = version
        targets.basicsize = int(info["basicsize"])
        targets.gil_disabled = bool(info.get("gil_disabled"))
        targets.mysqldb = info.get("mysqldb")
        targets.mysql_so = info.get("mysql_so")
        targets.mysqlclient_version = info.get("mysqlclient_version")
        targets.libpython = libpython
        targets.libpython_static = static
    if not primary:
        targets.guesses.append({"interpreter": interp, "why": why, "python_version": ".".join(map(str, version)),
                                "libpython": libpython, "mysql_so": info.get("mysql_so")})
    reported = {"thresholds": info.get("gc_thresholds"), "generations": info.get("gc_generations")}
    kind, generation_is_age, why_kind = compat.collector(version, bool(info.get("gil_disabled")),
                                                         reported["thresholds"], reported["generations"])
    if primary or targets.gc_collector is None:
        targets.gc_collector = kind
        targets.gc_reported = reported
    if why_kind:
        targets.notes.append(why_kind)
    header = compat.expected_header(bool(info.get("gil_disabled")))
    if int(info["basicsize"]) != header:
        targets.notes.append("%s reports a %s-byte object header where this build should have %d: MYSQL* is taken "
                             "at +%s as the interpreter says" % (interp, info["basicsize"], header, info["basicsize"]))

    # GC: USDT where the interpreter has it (Debian's python3.11), else the collection function.
    scratch = Targets(argv=[])
    sites = _usdt_sites(pyelf, scratch)
    mode = "usdt" if sites else None
    if not sites:
        if not pyelf.has_symtab():
            scratch.missing.append({"what": "gc brackets",
                                    "why": "%s has no USDT notes and no .symtab (stripped)" % libpython})
        else:
            sites = _gc_symbol_sites(pyelf, version, scratch)
            if sites:
                mode = "symbol"
            else:
                scratch.missing.append({"what": "gc brackets",
                                        "why": "no collection function known for Python %s in %s" % (
                                            ".".join(map(str, version)), libpython)})
    if sites and not generation_is_age:
        # Brackets only: the number this collector reports is not the age of what it scanned
        # (tests/unit/test_compat.py), so the kernel records no generation rather than a wrong one.
        if mode == "usdt":
            scratch.gc_args.update(GC_START_ARG_KIND=0, GC_START_ARG_REG=0, GC_START_ARG_OFF=0)
        else:
            scratch.gc_args["GC_SYM_GEN_REG"] = -1
    if sites and any(targets.gc_args.get(k, v) != v for k, v in scratch.gc_args.items()):
        targets.missing.append({"what": "gc brackets in %s" % libpython,
                                "why": "their operands differ from %s's and one program serves every interpreter "
                                       "of a run: collections there are not bracketed" % targets.libpython})
        sites = []
    elif sites:
        targets.gc_args.update(scratch.gc_args)
        targets.gc_mode = targets.gc_mode or mode
    targets.notes += scratch.notes
    targets.missing += scratch.missing
    for site in sites:
        _add_probe(targets, site)
    fin = _site("finalize", "on_finalize", pyelf, "Py_FinalizeEx", "uprobe")
    if fin is None:
        targets.missing.append({"what": "Py_FinalizeEx",
                                "why": "not found in %s: shutdown closes will read as refcount/gc" % libpython})
    else:
        _add_probe(targets, fin)
        _add_after_atexit(targets, pyelf, version, libpython)

    # mysqlclient and its client library.
    mysql_so = info.get("mysql_so")
    if not mysql_so:
        if primary:
            why_not = ("MySQLdb is not importable by %s" % interp if not info.get("mysqldb")
                       else "MySQLdb has no compiled _mysql module (%s)" % info.get("mysqldb"))
            targets.missing.append({"what": "mysqlclient", "why": why_not + "; no MySQL probes attached"})
        return
    so = None
    if int(info["basicsize"]) != targets.basicsize:
        targets.missing.append({"what": "mysqlclient in %s" % mysql_so, "why": "its interpreter's object header "
                                "(%s bytes) differs from %s's: its closes are not attributed" % (
                                    info["basicsize"], targets.interpreter)})
    else:
        so = info.get("mysql_so_elf") or elflib.Elf(mysql_so)
        layout = compat.mysqlclient_layout(so, int(info["basicsize"]))
        if primary or not targets.mysqlclient_layout:
            targets.mysqlclient_layout = layout
        if layout["mysql_offset"] is not None and not layout["verified"]:
            targets.missing.append({"what": "mysqlclient's connection layout in %s" % mysql_so, "why": layout["why"]})
            so = None
        elif not layout["verified"]:
            targets.notes.append(layout["why"])
    if so is not None and int(info["basicsize"]) == targets.basicsize:
        for role, fn, sym in (("py_close", "on_py_close", "_mysql_ConnectionObject_close"),
                              ("py_dealloc", "on_py_dealloc", "_mysql_ConnectionObject_dealloc")):
            s = _site(role, fn, so, sym, "uprobe")
            if s is None:
                targets.missing.append({"what": sym,
                                        "why": "not in %s (stripped .symtab?): causes will be unknown" % mysql_so})
            else:
                _add_probe(targets, s)
    if "client_elf" in info:  # a running process: the library it has mapped (or none found)
        client = info["client_elf"]
    else:
        client = find_defining(elflib.Elf(mysql_so), "mysql_close", env)
    if client is None:
        targets.missing.append({"what": "client library",
                                "why": "no library defining mysql_close found for %s" % mysql_so})
        return
    if not primary:
        targets.guesses[-1]["client_lib"] = os.path.realpath(client.path)
    _add_client_probes(targets, client, "linked by %s" % mysql_so)


#: Where "shutdown" begins (the cause contract: after the program's last atexit handler, when
#: the interpreter is finalising), per version: the first of these present in libpython is
#: probed, and only counts on a thread that entered Py_FinalizeEx (probes.c, on_after_atexit),
#: because some of them also run elsewhere (the fork child deletes other threads' states too).
#: Read from the disassembly of Py_FinalizeEx of 3.8-3.13 (pyenv) and Debian's python3.11:
#:   3.8   call_py_exitfuncs is inlined (an indirect call to atexit's callfuncs); the next
#:         call is the static flush_std_files (.symtab only).
#:   3.9-3.12  _PyThreadState_DeleteExcept, right after _PyRuntimeState_SetFinalizing;
#:         exported (PyAPI_FUNC), so also in Debian's stripped, statically linked python3.11,
#:         whose _PyAtExit_Call is local after LTO.
#:   3.13  _PyAtExit_Call's return (local: .symtab only); entry of _PyThreadState_RemoveExcept
#:         otherwise. The uretprobe fires once, on the finalising main thread, whose C stack
#:         does not switch under it (a greenlet switch inside an atexit handler still returns
#:         through the same frame). Debian 13's python3.13 is stripped and hides both (its
#:         Py_FinalizeEx jumps to a local _Py_Finalize whose calls run wait_for_thread_shutdown,
#:         _Py_FinishPendingCalls, _PyAtExit_Call, stop-the-world, _PyThreadState_RemoveExcept,
#:         ..., flush_std_files, _PySignal_Fini, PyGC_Collect, finalize_modules): the exported
#:         PyGC_Collect is the first call after the atexit handlers it can see. Later than the
#:         interpreter's own mark by the other threads' states and std files: what those free
#:         (a daemon thread's frames) reads as refcount there, never a connection of a module
#:         global (tests/system/test_bpf_known_causes.py on Debian 13: scripts/debian13-check).
#: Objects the atexit module frees after the last handler (a handler's arguments) fall before
#: the mark; the agent says shutdown for those: an edge the known-causes workload avoids.
AFTER_ATEXIT = (
    ((3, 13), (("_PyAtExit_Call", "uretprobe"), ("_PyThreadState_RemoveExcept", "uprobe"),
               ("PyGC_Collect", "uprobe"))),
    ((3, 9), (("_PyThreadState_DeleteExcept", "uprobe"), ("_PyAtExit_Call", "uretprobe"))),
    ((3, 8), (("flush_std_files", "uprobe"),)),
)


def _add_after_atexit(targets, pyelf, version, libpython):
    """Probe where the interpreter starts finalising (AFTER_ATEXIT), or say shutdown starts earlier."""
    for since, choices in AFTER_ATEXIT:
        if tuple(version[:2]) < since:
            continue
        for symbol, how in choices:
            site = _site("after_atexit", "on_after_atexit", pyelf, symbol, how)
            if site is not None:
                _add_probe(targets, site)
                targets.after_atexit = targets.after_atexit is not False
                return
        break
    targets.after_atexit = False
    targets.missing.append({"what": "end of atexit handlers", "why": "no known call after them in %s: shutdown is "
                            "counted from Py_FinalizeEx entry (drops in atexit handlers read as shutdown)" % libpython})


#: Client libraries looked up in the loader cache for a command that is not Python.
CLIENT_SONAMES = ("libmariadb.so", "libmysqlclient.so", "libperconaserverclient.so")


def _add_cached_clients(targets):
    """Every MySQL/MariaDB client library in /etc/ld.so.cache (a guess: the program may load one)."""
    seen = set()
    for soname, path in sorted(elflib.ld_cache().items()):
        if not soname.startswith(CLIENT_SONAMES):
            continue
        real = os.path.realpath(path)
        if real in seen or not os.path.exists(real):
            continue
        seen.add(real)
        try:
            e = elflib.Elf(real)
        except (elflib.ElfError, OSError):
            continue
        if e.symbol("mysql_close") is not None:
            _add_client_probes(targets, e, "found through /etc/ld.so.cache (%s)" % soname)


def resolve_targets(argv, env, uid=None, gid=None, cwd=None):
    """Resolve the interpreter, libpython, _mysql .so, client library and every probe site for ``argv``.

    A Python command is resolved exactly. Any other command (a shell, a script, a C program)
    is traced best effort: the client library it links, the Pythons its shell text names and
    the python3 on its PATH (with their mysqlclient), and the MySQL client libraries in the
    loader cache; ``guesses``, ``client_libs`` and ``notes`` say what was guessed and why.
    Raises BpfUnavailable only for a missing command; when nothing at all can be probed,
    ``nothing_to_probe`` says why and the probes list is empty.
    """
    t0 = time.monotonic()
    env = dict(os.environ if env is None else env)
    cwd = cwd or os.getcwd()
    targets = Targets(argv=list(argv))
    cmd = follow_command(argv, env)
    targets.command = {"path": cmd.path, "python": cmd.interpreter is not None}
    targets.timings["interpreter_s"] = round(time.monotonic() - t0, 4)
    t1 = time.monotonic()
    if cmd.interpreter is not None:
        _add_python(targets, cmd.interpreter, cmd.args, env, uid, gid, cwd, primary=True)
        targets.timings["find_spec_helper_s"] = round(time.monotonic() - t1, 4)
    else:
        targets.command["why"] = cmd.why
        # The client library the program itself links (a C program, a Perl DBD, ...): no guess.
        try:
            linked = find_defining(elflib.Elf(cmd.path), "mysql_close", env)
        except (elflib.ElfError, OSError):
            linked = None
        if linked is not None:
            _add_client_probes(targets, linked, "linked by %s" % cmd.path)
        for interp, pyargs, why in guess_interpreters(cmd, env, cwd):
            try:
                _add_python(targets, interp, pyargs, env, uid, gid, cwd, primary=False, why=why)
            except (BpfUnavailable, elflib.ElfError, OSError) as exc:
                targets.missing.append({"what": "guessed interpreter %s" % interp, "why": str(exc)})
        targets.timings["find_spec_helper_s"] = round(time.monotonic() - t1, 4)
        _add_cached_clients(targets)
        targets.notes.append(
            "%s: probes are placed on guesses (%s) and on the MySQL client libraries found (%s); "
            "a Python or library it loads from elsewhere is not seen" % (
                cmd.why,
                ", ".join("%s, %s" % (g["interpreter"], g["why"]) for g in targets.guesses) or "no Python found",
                ", ".join(c["path"] for c in targets.client_libs) or "none"))
        if not targets.probes:
            targets.nothing_to_probe = ("%s and neither a Python nor a MySQL client library was found to probe "
                                        "(no python3 on its PATH, none in /etc/ld.so.cache)" % cmd.why)
    targets.timings["elf_s"] = round(time.monotonic() - t1, 4)
    targets.timings["total_s"] = round(time.monotonic() - t0, 4)
    return targets
