"""Resolve, before the traced command runs, the exact files and code sites to probe.

Uprobes are keyed by (file, offset) and attaching by path before the process maps a library
catches every later mapping (FACTS.md), so everything is decided up front from the command
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
   (``x86.choose_probe_offset``).
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import time

from trace_quit.tracer.bpf import elf as elflib
from trace_quit.tracer.bpf import x86
from trace_quit.tracer.bpf.errors import BpfUnavailable

#: Byte offsets of registers in x86-64 ``struct pt_regs`` (the uprobe program's context).
PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "ax": 80, "cx": 88, "dx": 96, "si": 104, "di": 112, "orig_ax": 120,
    "ip": 128, "cs": 136, "flags": 144, "sp": 152, "ss": 160,
}
_ARG_REGS = ("di", "si", "dx", "cx", "r8", "r9")  # System V x86-64 integer arguments

# USDT operand register spellings (AT&T, any width) -> pt_regs field.
_USDT_REGS = {}
for _base, _names in {
    "ax": "rax eax ax al", "bx": "rbx ebx bx bl", "cx": "rcx ecx cx cl", "dx": "rdx edx dx dl",
    "si": "rsi esi si sil", "di": "rdi edi di dil", "bp": "rbp ebp bp bpl", "sp": "rsp esp sp spl",
    "ip": "rip eip",
}.items():
    for _n in _names.split():
        _USDT_REGS[_n] = _base
for _i in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _USDT_REGS["r%d%s" % (_i, _suffix)] = "r%d" % _i

#: The collection function per CPython version (FACTS.md), and which argument register holds
#: the generation (None: unknown). Verified by tests/system/test_bpf_gc_symbols.py against
#: gc.collect(n) on each pyenv version. 3.8 is built with GCC clones whose signatures depend
#: on the build: pyenv's 3.8.18 has collect.constprop.1(generation, ...) with the generation
#: in %rdi and collect.constprop.0(...) hard-wired to generation 2, so the bracket is kept
#: but the generation is reported unknown rather than guessed from a register.
GC_FUNCTIONS = [
    ((3, 8), ("collect",), 1),
    ((3, 8), ("collect.constprop.*",), None),
    ((3, 9), ("collect",), 1),
    ((3, 10), ("gc_collect_main",), 1),
    ((3, 11), ("gc_collect_main",), 1),
    ((3, 12), ("gc_collect_main",), 1),
    ((3, 13), ("gc_collect_main",), 1),
]

# The helper run inside the target interpreter. Python 3.6+ syntax; prints one JSON line.
# It fixes sys.path[0] to what the real command would get (script dir, cwd, or nothing with
# -I/-P) and asks the import system's finders for MySQLdb without executing it; the
# _mysql extension is located with PathFinder on the package's own search locations,
# which does not import the parent package either.
_HELPER = r"""
import json, os, re, sys, sysconfig, importlib.util, importlib.machinery
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
       "mysqldb": None, "mysql_so": None, "mysqlclient_version": None}
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
class ProbeSite:
    """One place to attach: a uprobe/uretprobe/USDT site in a file, and the BPF function for it."""

    role: str            # connect, connect_ret, close, close_ret, py_close, py_dealloc, gc_start, gc_done, finalize
    fn: str              # BPF function in probes.c
    path: str            # the file (real path) the uprobe is keyed on
    symbol: str          # symbol or provider:name for USDT
    offset: int          # file offset of the probed instruction
    how: str             # uprobe | uretprobe | usdt
    ref_ctr_offset: int = 0   # file offset of the USDT semaphore (kernel-managed), 0 if none
    why: str = ""        # why this offset (x86.choose_probe_offset), or the USDT argument spec
    skipped: str = None  # which calls the chosen offset does not see

    def describe(self):
        """A JSON-able dict for the capture header."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


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

    def describe(self):
        """A JSON-able dict for the capture header."""
        d = dataclasses.asdict(self)
        d["probes"] = [p.describe() for p in self.probes]
        d["python_version"] = ".".join(map(str, self.python_version)) if self.python_version else None
        return d


# ---------------------------------------------------------------------------------------
# The command line -> interpreter


def _which(name, env):
    """PATH lookup as execvp does it, with the target's PATH."""
    if "/" in name:
        return os.path.abspath(name) if os.path.exists(name) else None
    for d in (env.get("PATH") or os.defpath).split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    return None


def _shebang(path):
    """(interpreter, optional single argument) of a ``#!`` script, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not line:
        return None
    parts = line.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else None)


def _is_python_elf(e):
    """Whether an ELF executable is a CPython interpreter (defines or links Py_BytesMain)."""
    if e.symbol("Py_BytesMain") or e.symbol("Py_Main"):
        return True
    return any(n.startswith("libpython") for n in e.dynamic()["needed"])


def _skip_env(args):
    """For ``env [-S] [-i] [-u VAR] [VAR=value]... cmd args``: the index of cmd in args."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-i", "--ignore-environment", "-"):
            i += 1
        elif a in ("-u", "--unset", "-C", "--chdir"):
            i += 2
        elif a.startswith("-"):
            i += 1
        elif "=" in a:
            i += 1
        else:
            return i
    return None


def resolve_interpreter(argv, env):
    """Follow argv to the Python interpreter it will run: (interpreter_path, python_args) or raise."""
    if not argv:
        raise BpfUnavailable("no command was given; put the program after --")
    args = list(argv)
    for _ in range(5):  # kernel's binfmt_script nests a few levels at most
        path = _which(args[0], env)
        if path is None:
            raise BpfUnavailable("command not found: %s; check the name or give its full path" % args[0])
        try:
            e = elflib.Elf(path)
        except elflib.ElfError:
            e = None
        except OSError as exc:
            raise BpfUnavailable("cannot read %s (%s); check its permissions" % (path, exc.strerror))
        if e is not None:
            if os.path.basename(path) == "env" or os.path.basename(os.path.realpath(path)) == "env":
                i = _skip_env(args[1:])
                if i is None:
                    raise BpfUnavailable("env was given no command; put the Python program after env")
                args = args[1 + i:]
                continue
            if _is_python_elf(e):
                return path, args[1:]
            raise BpfUnavailable(
                "%s is not a Python interpreter, so eBPF probes cannot be placed; run the Python "
                "program directly (trace-quit -- python prog.py) or use --no-bpf" % path)
        sb = _shebang(path)
        if sb is None:
            raise BpfUnavailable("%s is neither an executable nor a #! script; run it with python explicitly" % path)
        interp, arg = sb
        new = [interp] + ([arg] if arg is not None else []) + [path] + args[1:]
        if os.path.basename(interp) == "env" and arg is not None:
            # "#!/usr/bin/env python3" or "#!/usr/bin/env -S python3 -u": split like env -S.
            new = [interp] + shlex.split(arg) + [path] + args[1:]
        args = new
    raise BpfUnavailable("too many levels of #! interpreters in %s" % argv[0])


def _python_path0(pyargs, cwd):
    """What the real command puts in sys.path[0] (None when -I/-P), and the -I/-E/-s/-S flags."""
    flags = []
    i = 0
    safe = False
    while i < len(pyargs):
        a = pyargs[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            i += 1
            continue
        if a in ("-c", "-m"):
            return (None if safe else cwd), flags
        letters = a[1:]
        for j, ch in enumerate(letters):
            if ch in "IEsS":
                flags.append("-" + ch)
            if ch in "IP":
                safe = True
            if ch in "cm":
                return (None if safe else cwd), flags
            if ch in "XWQ":  # options with an argument
                if j == len(letters) - 1:
                    i += 1
                break
        i += 1
    rest = pyargs[i:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if safe:
        return None, flags
    if not rest or rest[0] == "-":
        return cwd, flags
    return os.path.dirname(os.path.realpath(os.path.join(cwd, rest[0]))), flags


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


# ---------------------------------------------------------------------------------------
# Libraries


def _expand_origin(paths, origin):
    return [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in paths if p]


def find_library(name, needer, env, cache=None):
    """Where the dynamic loader finds DT_NEEDED ``name`` for the ELF ``needer`` (path or None)."""
    if "/" in name:
        return name if os.path.exists(name) else None
    dyn = needer.dynamic()
    origin = os.path.dirname(os.path.realpath(needer.path))
    dirs = []
    if dyn["rpath"] and not dyn["runpath"]:
        dirs += _expand_origin(dyn["rpath"].split(":"), origin)
    dirs += [d for d in (env.get("LD_LIBRARY_PATH") or "").split(":") if d]
    if dyn["runpath"]:
        dirs += _expand_origin(dyn["runpath"].split(":"), origin)
    for d in dirs:
        cand = os.path.join(d, name)
        if os.path.isfile(cand):
            return cand
    cache = elflib.ld_cache() if cache is None else cache
    if name in cache and os.path.exists(cache[name]):
        return cache[name]
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        cand = os.path.join(d, name)
        if os.path.isfile(cand):
            return cand
    return None


def find_defining(start, symbol, env, depth=2):
    """The first file among ``start`` and its DT_NEEDED closure (breadth-first) defining ``symbol``."""
    cache = elflib.ld_cache()
    queue = [(start, 0)]
    seen = set()
    while queue:
        e, d = queue.pop(0)
        real = os.path.realpath(e.path)
        if real in seen:
            continue
        seen.add(real)
        if e.symbol(symbol) is not None:
            return e
        if d >= depth:
            continue
        for name in e.dynamic()["needed"]:
            if name.startswith(("libc.so", "libm.so", "libpthread", "libdl", "ld-linux")):
                continue
            p = find_library(name, e, env, cache)
            if p:
                try:
                    queue.append((elflib.Elf(p), d + 1))
                except (elflib.ElfError, OSError):
                    pass
    return None


# ---------------------------------------------------------------------------------------
# Probe sites


def _site(role, fn, e, symbol, how, choose=True):
    """A ProbeSite for ``symbol`` in ELF ``e`` at its chosen offset, or None if the symbol is absent."""
    s = e.symbol(symbol)
    if s is None:
        return None
    off = e.vaddr_to_offset(s.value)
    if choose:
        delta, why, skipped = x86.choose_probe_offset(e.read(off, x86.MAX_SCAN))
    else:
        delta, why, skipped = 0, "+0 (function entry)", None
    return ProbeSite(role=role, fn=fn, path=os.path.realpath(e.path), symbol=symbol, offset=off + delta,
                     how=how, why=why, skipped=skipped)


def parse_usdt_arg(spec):
    """One USDT operand (``-4@112(%rsp)``, ``-8@%r12``, ``4@$5``) as -D parameters, or None."""
    m = re.match(r"^(-?)(\d+)@(.*)$", spec.strip())
    if not m:
        return None
    signed, size, loc = bool(m.group(1)), int(m.group(2)), m.group(3)
    if size not in (1, 2, 4, 8):
        return None
    m2 = re.match(r"^%(\w+)$", loc)
    if m2 and m2.group(1) in _USDT_REGS and _USDT_REGS[m2.group(1)] != "ip":
        return {"KIND": 1, "REG": PT_REGS[_USDT_REGS[m2.group(1)]], "OFF": 0, "SIZE": size, "SIGNED": int(signed)}
    m2 = re.match(r"^(-?(?:0x[0-9a-fA-F]+|\d+))?\(%(\w+)\)$", loc)
    if m2 and m2.group(2) in _USDT_REGS and _USDT_REGS[m2.group(2)] != "ip":
        return {"KIND": 2, "REG": PT_REGS[_USDT_REGS[m2.group(2)]], "OFF": int(m2.group(1) or "0", 0),
                "SIZE": size, "SIGNED": int(signed)}
    m2 = re.match(r"^\$(-?\d+)$", loc)
    if m2:
        return {"KIND": 3, "REG": 0, "OFF": int(m2.group(1)), "SIZE": size, "SIGNED": int(signed)}
    return None  # rip-relative and indexed operands: not supported, reported as missing


def _usdt_sites(e, targets):
    """GC start/done sites from USDT notes (python:gc__start, python:gc__done), or False."""
    probes = {p.name: p for p in e.usdt_probes() if p.provider == "python"}
    if "gc__start" not in probes or "gc__done" not in probes:
        return False
    sites, args = [], {}
    for role, name, fn, prefix in (("gc_start", "gc__start", "on_gc_start_usdt", "GC_START"),
                                   ("gc_done", "gc__done", "on_gc_done_usdt", "GC_DONE")):
        p = probes[name]
        arg = parse_usdt_arg(p.args.split()[0]) if p.args.strip() else None
        if arg is None:
            targets.notes.append("USDT python:%s argument %r is not decodable; its value is reported as -1" % (name, p.args))
            arg = {"KIND": 0, "REG": 0, "OFF": 0, "SIZE": 8, "SIGNED": 1}
        for k, v in arg.items():
            args["%s_ARG_%s" % (prefix, k)] = v
        ref = e.vaddr_to_offset(p.semaphore) if p.semaphore else 0
        sites.append(ProbeSite(role=role, fn=fn, path=os.path.realpath(e.path), symbol="python:" + name,
                               offset=e.vaddr_to_offset(p.pc), how="usdt", ref_ctr_offset=ref,
                               why="USDT operand %s; semaphore managed by the kernel (ref_ctr_offset)" % p.args))
    targets.gc_args.update(args)
    return sites


def _gc_symbol_sites(e, version, targets):
    """GC start/done from the version's collection function (entry + uretprobe), or []."""
    rows = [(names, argno) for ver, names, argno in GC_FUNCTIONS
            if version is not None and tuple(version[:2]) == ver]
    if not rows:
        # Unknown (newer) version: try the most recent known name, say so.
        rows = [(("gc_collect_main",), 1)]
        targets.notes.append("Python %s is newer than the GC table; trying gc_collect_main(tstate, generation)" % (
            ".".join(map(str, version)) if version else "?"))
    found, argno = [], None
    for names, argno in rows:
        for pattern in names:
            if pattern.endswith("*"):
                found = e.symbols_matching(lambda n: n.startswith(pattern[:-1]))
            else:
                s = e.symbol(pattern)
                found = [s] if s is not None else []
            if found:
                break
        if found:
            break
    if found and argno is None:
        targets.notes.append("GC brackets from %s: generation not readable in this build (reported unknown)" % (
            ", ".join(s.name for s in found)))
    sites = []
    for s in found:
        entry = _site("gc_start", "on_gc_start_sym", e, s.name, "uprobe")
        ret = _site("gc_done", "on_gc_done_sym", e, s.name, "uretprobe")
        sites += [entry, ret]
    if sites:
        targets.gc_args["GC_SYM_GEN_REG"] = PT_REGS[_ARG_REGS[argno]] if argno is not None else -1
    return sites


def resolve_targets(argv, env, uid=None, gid=None, cwd=None):
    """Resolve the interpreter, libpython, _mysql .so, client library and every probe site for ``argv``."""
    t0 = time.monotonic()
    env = dict(os.environ if env is None else env)
    cwd = cwd or os.getcwd()
    targets = Targets(argv=list(argv))
    interp, pyargs = resolve_interpreter(argv, env)
    targets.interpreter = interp
    targets.interpreter_real = os.path.realpath(interp)
    exe = elflib.Elf(targets.interpreter_real)
    targets.timings["interpreter_s"] = round(time.monotonic() - t0, 4)

    t1 = time.monotonic()
    info = _run_helper(interp, pyargs, env, uid, gid, cwd)
    targets.timings["find_spec_helper_s"] = round(time.monotonic() - t1, 4)
    targets.python_version = tuple(info["version"])
    targets.basicsize = int(info["basicsize"])
    targets.gil_disabled = bool(info.get("gil_disabled"))
    targets.mysqldb = info.get("mysqldb")
    targets.mysql_so = info.get("mysql_so")
    targets.mysqlclient_version = info.get("mysqlclient_version")
    if targets.gil_disabled:
        targets.notes.append("free-threaded build: the GC has no generations; gc causes carry generation -1")

    t2 = time.monotonic()
    # libpython: the executable itself when static, else the libpython3.X.so it links.
    lib = None
    for name in exe.dynamic()["needed"]:
        if name.startswith("libpython"):
            lib = find_library(name, exe, env)
            if lib is None:
                raise BpfUnavailable("cannot find %s, which %s needs; check LD_LIBRARY_PATH" % (name, interp))
    targets.libpython_static = lib is None
    targets.libpython = os.path.realpath(lib or targets.interpreter_real)
    pyelf = exe if lib is None else elflib.Elf(targets.libpython)

    # GC: USDT where the interpreter has it (Debian's python3.11), else the collection function.
    sites = _usdt_sites(pyelf, targets)
    if sites:
        targets.gc_mode = "usdt"
    else:
        if not pyelf.has_symtab():
            targets.missing.append({"what": "gc brackets", "why": "%s has no USDT notes and no .symtab (stripped)" % targets.libpython})
            sites = []
        else:
            sites = _gc_symbol_sites(pyelf, targets.python_version, targets)
            if sites:
                targets.gc_mode = "symbol"
            else:
                targets.missing.append({"what": "gc brackets", "why": "no collection function known for Python %s in %s" % (
                    ".".join(map(str, targets.python_version)), targets.libpython)})
    targets.probes += sites
    fin = _site("finalize", "on_finalize", pyelf, "Py_FinalizeEx", "uprobe")
    if fin is None:
        targets.missing.append({"what": "Py_FinalizeEx", "why": "not found in %s: shutdown closes will read as refcount/gc" % targets.libpython})
    else:
        targets.probes.append(fin)

    # mysqlclient and its client library.
    if not targets.mysql_so:
        why = "MySQLdb is not importable by %s" % interp if not targets.mysqldb else "MySQLdb has no compiled _mysql module (%s)" % targets.mysqldb
        targets.missing.append({"what": "mysqlclient", "why": why + "; no MySQL probes attached"})
    else:
        so = elflib.Elf(targets.mysql_so)
        for role, fn, sym in (("py_close", "on_py_close", "_mysql_ConnectionObject_close"),
                              ("py_dealloc", "on_py_dealloc", "_mysql_ConnectionObject_dealloc")):
            s = _site(role, fn, so, sym, "uprobe")
            if s is None:
                targets.missing.append({"what": sym, "why": "not in %s (stripped .symtab?): causes will be unknown" % targets.mysql_so})
            else:
                targets.probes.append(s)
        client = find_defining(so, "mysql_close", env)
        if client is None:
            targets.missing.append({"what": "client library", "why": "no library defining mysql_close found for %s" % targets.mysql_so})
        else:
            targets.client_lib = os.path.realpath(client.path)
            targets.client_soname = client.dynamic()["soname"] or os.path.basename(client.path)
            close = _site("close", "on_close", client, "mysql_close", "uprobe")
            targets.probes.append(close)
            # Same offset: the stack pointer is untouched up to it (x86.py), so the return
            # address is still at (%rsp) and one emulated breakpoint serves both consumers.
            targets.probes.append(dataclasses.replace(close, role="close_ret", fn="on_close_ret", how="uretprobe"))
            conn = _site("connect", "on_connect", client, "mysql_real_connect", "uprobe")
            if conn is None:
                targets.missing.append({"what": "mysql_real_connect", "why": "not in %s" % targets.client_lib})
            else:
                targets.probes.append(conn)
                targets.probes.append(dataclasses.replace(conn, role="connect_ret", fn="on_connect_ret", how="uretprobe"))
    targets.timings["elf_s"] = round(time.monotonic() - t2, 4)
    targets.timings["total_s"] = round(time.monotonic() - t0, 4)
    return targets
