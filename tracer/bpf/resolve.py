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

from trace_quit.tracer.bpf import compat
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
    #: The interpreter's collector (compat.collector): generational | incremental | free-threaded
    #: | unknown; only a generational one's generation numbers are ages, and only those are read.
    gc_collector: str = None
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


@dataclasses.dataclass
class Command:
    """Where a command line leads: the file the kernel finally runs, and whether it is Python."""

    path: str                 # the ELF (or unreadable file) finally exec'd
    args: list                # its arguments (argv[1:] as it receives them)
    interpreter: str = None   # the same path when it is a CPython interpreter, else None
    scripts: list = dataclasses.field(default_factory=list)  # #! scripts passed through on the way
    why: str = None           # why it is not Python (when interpreter is None)


def follow_command(argv, env):
    """Follow argv through PATH, ``#!`` lines and ``env`` to the file that runs: a Command.

    Raises BpfUnavailable only when there is no command or it does not exist; a command that
    is not Python is a Command with ``interpreter=None`` and ``why``.
    """
    if not argv:
        raise BpfUnavailable("no command was given; put the program after --")
    args = list(argv)
    scripts = []
    path = None
    for _ in range(5):  # kernel's binfmt_script nests a few levels at most
        path = _which(args[0], env)
        if path is None:
            raise BpfUnavailable("command not found: %s; check the name or give its full path" % args[0])
        try:
            e = elflib.Elf(path)
        except elflib.ElfError:
            e = None
        except OSError as exc:
            return Command(path, args[1:], scripts=scripts, why="cannot read %s (%s)" % (path, exc.strerror))
        if e is not None:
            if os.path.basename(path) == "env" or os.path.basename(os.path.realpath(path)) == "env":
                i = _skip_env(args[1:])
                if i is None:
                    return Command(path, args[1:], scripts=scripts, why="env was given no command")
                args = args[1 + i:]
                continue
            if _is_python_elf(e):
                return Command(path, args[1:], interpreter=path, scripts=scripts)
            return Command(path, args[1:], scripts=scripts, why="%s is not a Python interpreter" % path)
        sb = _shebang(path)
        if sb is None:
            return Command(path, args[1:], scripts=scripts, why="%s is neither an ELF executable nor a #! script" % path)
        scripts.append(path)
        interp, arg = sb
        new = [interp] + ([arg] if arg is not None else []) + [path] + args[1:]
        if os.path.basename(interp) == "env" and arg is not None:
            # "#!/usr/bin/env python3" or "#!/usr/bin/env -S python3 -u": split like env -S.
            new = [interp] + shlex.split(arg) + [path] + args[1:]
        args = new
    return Command(path, args[1:], scripts=scripts, why="too many levels of #! interpreters in %s" % argv[0])


# ---------------------------------------------------------------------------------------
# Commands that are not Python: where a Python may be started later (best effort)

_SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "posh", "yash"))
#: ``python``, ``python3``, ``python3.11``: names that are worth resolving wherever they appear.
_PY_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")
#: Words that end a simple command, or that run the next word as the command.
_SEPARATORS = frozenset((";", "&&", "||", "|", "&", "|&", ";;", "(", ")", "{", "}", "!", "then", "do",
                         "else", "elif", "if", "while", "until", "in", "`", "$("))
_PREFIXES = frozenset(("exec", "nohup", "time", "command", "builtin", "setsid", "nice", "stdbuf", "chrt", "ionice"))
#: At most this many interpreters are examined (each costs one helper run, ~30-60 ms).
MAX_GUESSES = 4
SCRIPT_SCAN_BYTES = 65536
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(word, env):
    """$VAR and ${VAR} as the shell would expand them with the program's environment."""
    if word.startswith("~/") and env.get("HOME"):
        word = env["HOME"] + word[1:]
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), word)


def _shell_words(text):
    """Shell text as lists of words, one list per simple command (a tolerant tokenizer)."""
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            words = list(lex)
        except ValueError:  # an unbalanced quote: fall back to whitespace
            words = line.split("#", 1)[0].split()
        cur = []
        for w in words:
            if w in _SEPARATORS or (w and set(w) <= set(";&|()<>")):
                if cur:
                    commands.append(cur)
                cur = []
            else:
                cur.append(w)
        if cur:
            commands.append(cur)
    return commands


def _shell_input(args):
    """For a shell's arguments: ("-c", command string) or ("file", script path) or None."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a[1:]):
            return ("-c", args[i + 1]) if i + 1 < len(args) else None
        if a in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 2
            continue
        if a == "--":
            return ("file", args[i + 1]) if i + 1 < len(args) else None
        if a.startswith(("-", "+")):
            i += 1
            continue
        return ("file", a)
    return None


def _read_script(path):
    try:
        with open(path, "rb") as f:
            data = f.read(SCRIPT_SCAN_BYTES)
    except OSError:
        return None
    if b"\0" in data:
        return None  # not a text script
    return data.decode("utf-8", "replace")


def guess_interpreters(cmd, env, cwd, depth=0, out=None, seen_texts=None):
    """[(interpreter, python args, why)]: Pythons a non-Python command may start, best first.

    Looks in shell ``-c`` strings and shell scripts (the command's own ``#!`` scripts and a
    script given to a shell) for words that run a Python, following PATH, ``#!`` and ``env``
    like the shell would; then adds the ``python3`` on the program's PATH. A guess only:
    the program decides at run time what it really starts.
    """
    out = [] if out is None else out
    seen_texts = set() if seen_texts is None else seen_texts
    texts = []
    for script in cmd.scripts:
        texts.append((script, "the script %s" % script))
    if os.path.basename(os.path.realpath(cmd.path)) in _SHELLS or os.path.basename(cmd.path) in _SHELLS:
        inp = _shell_input(cmd.args)
        if inp and inp[0] == "-c":
            texts.append((None, inp[1]))
        elif inp:
            texts.append((os.path.join(cwd, inp[1]), "the script %s" % inp[1]))
    for path, origin in texts:
        if path is None:
            text, origin = origin, "the shell command %r" % (origin if len(origin) < 80 else origin[:77] + "...")
        else:
            if path in seen_texts:
                continue
            seen_texts.add(path)
            text = _read_script(path)
            if text is None:
                continue
        for words in _shell_words(text):
            _scan_words([_expand(w, env) for w in words], env, cwd, origin, out, depth, seen_texts)
    if depth == 0:
        # Possibly a wrapper (a pyenv shim): _add_python asks it for sys.executable.
        py = _which("python3", env)
        if py is not None and len(out) < MAX_GUESSES and not any(g[0] == py for g in out):
            out.append((py, [], "the python3 on the program's PATH"))
    return out


def _follow_quiet(argv, env):
    try:
        return follow_command(argv, env)
    except BpfUnavailable:
        return None


def _scan_words(words, env, cwd, origin, out, depth, seen_texts):
    """Add the Pythons one simple command (a list of words) would run."""
    i = 0
    while i < len(words):  # skip VAR=value, exec/nohup/..., env and its options
        w = words[i]
        if re.match(r"^[A-Za-z_]\w*=", w) or w in _PREFIXES or w.startswith("-") and i > 0 and words[i - 1] in _PREFIXES:
            i += 1
        elif os.path.basename(w) == "env":
            j = _skip_env(words[i + 1:])
            if j is None:
                return
            i += 1 + j
        else:
            break
    positions = [i] + [j for j in range(i + 1, len(words)) if _PY_NAME.match(os.path.basename(words[j]))]
    for j in positions:
        if j >= len(words) or len(out) >= MAX_GUESSES:
            return
        word = words[j]
        if "/" in word and not os.path.isabs(word):
            word = os.path.join(cwd, word)
        c = _follow_quiet([word] + words[j + 1:], env)
        if c is None:
            continue
        if c.interpreter:
            if not any(g[0] == c.interpreter for g in out):
                out.append((c.interpreter, c.args, "run by %s" % origin))
        elif _PY_NAME.match(os.path.basename(word)):
            # A wrapper named python (a pyenv shim): _add_python asks it for sys.executable.
            shim = _which(word, env)
            if shim and not any(g[0] == shim for g in out):
                out.append((shim, words[j + 1:], "run by %s" % origin))
        elif depth < 2:
            guess_interpreters(c, env, cwd, depth + 1, out, seen_texts)


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


def _add_probe(targets, site):
    """Append ``site`` unless the same program is already on the same instruction."""
    if site is None:
        return False
    for p in targets.probes:
        if (p.path, p.offset, p.how, p.fn) == (site.path, site.offset, site.how, site.fn):
            return False
    targets.probes.append(site)
    return True


def last_errno_offset(client):
    """Offset of ``net.last_errno`` in MYSQL, read from the library's own ``mysql_errno``, or None.

    Both libmariadb and MySQL's client compile ``mysql_errno(mysql)`` to a NULL check and
    ``mov disp(%rdi),%eax`` (disp = offsetof(MYSQL, net.last_errno)): 0x90 in libmariadb3.
    """
    s = client.symbol("mysql_errno")
    if s is None:
        return None
    try:
        code = client.read(client.vaddr_to_offset(s.value), 32)
    except elflib.ElfError:
        return None
    for i in range(len(code) - 2):
        if code[i] == 0x8B and code[i + 1] == 0x87 and i + 6 <= len(code):       # mov disp32(%rdi),%eax
            return int.from_bytes(code[i + 2:i + 6], "little", signed=True)
        if code[i] == 0x8B and code[i + 1] == 0x47:                               # mov disp8(%rdi),%eax
            return int.from_bytes(code[i + 2:i + 3], "little", signed=True)
    return None


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
    version = tuple(info["version"])
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
        targets.libpython_static = lib is None
    if not primary:
        targets.guesses.append({"interpreter": interp, "why": why, "python_version": ".".join(map(str, version)),
                                "libpython": libpython, "mysql_so": info.get("mysql_so")})
    kind, generation_is_age, why_kind = compat.collector(version, bool(info.get("gil_disabled")))
    if primary or targets.gc_collector is None:
        targets.gc_collector = kind
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
            scratch.missing.append({"what": "gc brackets", "why": "%s has no USDT notes and no .symtab (stripped)" % libpython})
        else:
            sites = _gc_symbol_sites(pyelf, version, scratch)
            if sites:
                mode = "symbol"
            else:
                scratch.missing.append({"what": "gc brackets", "why": "no collection function known for Python %s in %s" % (
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
        targets.missing.append({"what": "Py_FinalizeEx", "why": "not found in %s: shutdown closes will read as refcount/gc" % libpython})
    else:
        _add_probe(targets, fin)

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
                                "(%s bytes) differs from %s's: its closes are not attributed" % (info["basicsize"], targets.interpreter)})
    else:
        so = elflib.Elf(mysql_so)
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
                targets.missing.append({"what": sym, "why": "not in %s (stripped .symtab?): causes will be unknown" % mysql_so})
            else:
                _add_probe(targets, s)
    client = find_defining(elflib.Elf(mysql_so), "mysql_close", env)
    if client is None:
        targets.missing.append({"what": "client library", "why": "no library defining mysql_close found for %s" % mysql_so})
        return
    if not primary:
        targets.guesses[-1]["client_lib"] = os.path.realpath(client.path)
    _add_client_probes(targets, client, "linked by %s" % mysql_so)


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
                cmd.why, ", ".join("%s, %s" % (g["interpreter"], g["why"]) for g in targets.guesses) or "no Python found",
                ", ".join(c["path"] for c in targets.client_libs) or "none"))
        if not targets.probes:
            targets.nothing_to_probe = ("%s and neither a Python nor a MySQL client library was found to probe "
                                        "(no python3 on its PATH, none in /etc/ld.so.cache)" % cmd.why)
    targets.timings["elf_s"] = round(time.monotonic() - t1, 4)
    targets.timings["total_s"] = round(time.monotonic() - t0, 4)
    return targets
