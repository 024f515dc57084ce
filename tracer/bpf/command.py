"""Where a command line leads: PATH, ``#!`` lines and ``env`` to the file that runs, and for a
command that is not Python (a shell, a script) the Pythons its text names (best guesses).

Part of resolving targets before the command runs (resolve.py); nothing here runs the command.
"""

import dataclasses
import os
import re
import shlex

from trace_quit.tracer.bpf import elf as elflib
from trace_quit.tracer.bpf.errors import BpfUnavailable


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
            return Command(path, args[1:], scripts=scripts,
                           why="%s is neither an ELF executable nor a #! script" % path)
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
        if (re.match(r"^[A-Za-z_]\w*=", w) or w in _PREFIXES
                or w.startswith("-") and i > 0 and words[i - 1] in _PREFIXES):
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
