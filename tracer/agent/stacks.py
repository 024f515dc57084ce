"""Where the program was when a record was made: its call stack, call site and thread.

Call sites are kept as (id(code), f_lasti) pairs when a record is made, and formatted to
"file:line in func" once per site when the channel writes the record out (the agent's cost
per connection: docs/performance.md). The agent's own frames, the standard library's and
those of libraries (events.LIBRARY_PACKAGES) are not the program's own when a call site is
named.

``Stacks`` is a part of the ``Agent`` (runtime.py), which reaches it only through ``self``.
"""

import json
import os
import sys

STACK_DEPTH = 8                       # frames kept for open/close stacks
CHAIN_DEPTH = 4                       # the program's own frames kept for a create_engine() call
CHAIN_WALK = 48                       # frames looked at for them (a deep stack costs no more)
STACK_CACHE_MAX = 4096                # formatted stacks kept (keyed by (id(code), f_lasti, ...))


class Stacks:
    """Call stacks and sites, and the thread's identity, as records carry them."""

    # Class attributes, not module globals: read on hot paths that also run during finalisation.
    STACK_DEPTH = STACK_DEPTH
    CHAIN_DEPTH = CHAIN_DEPTH
    STACK_CACHE_MAX = STACK_CACHE_MAX
    WHO_CACHE_MAX = 256

    def _init_stacks(self, ev):
        self.stack_cache = {}    # (id(code), lasti, ...) -> (["file:line in func", ...], its JSON, the codes)
        self.who_cache = {}      # thread ident -> (pid, tid, name, _who()'s fragments)
        self.encode_str = json.encoder.encode_basestring_ascii  # a string as JSON, quotes included
        self.getframe = sys._getframe
        self.line_of = _line_of
        # Frames from these are not the program's own when naming a create_engine() call site.
        self.skip_dirs = (os.path.dirname(os.path.abspath(__file__)),)
        self.stdlib_dir = os.path.dirname(os.__file__)
        # ... nor are frames of these packages, known by their module wherever they are installed.
        self.library_packages = frozenset(getattr(ev, "LIBRARY_PACKAGES", ()))
        self.normpath = os.path.normpath

    def _format_stack(self, stack):
        """(["file:line in func", ...], its JSON) for a ``stack()``; cached, as call sites repeat.

        The key is (id(code), lasti, ...): ints hash at once, where a code object hashes its
        constants and names on every lookup. An id stays unique while its entry holds the code."""
        key, codes = stack
        cache = self.stack_cache
        out = cache.get(key)
        if out is None:
            if len(cache) >= self.STACK_CACHE_MAX:
                cache.clear()  # bounded; also lets go of the code objects held in the values
            line_of = self.line_of
            strings = ["%s:%d in %s" % (code.co_filename, line_of(code, lasti), code.co_name)
                       for code, lasti in zip(codes, key[1::2])]
            out = cache[key] = (strings, self.dumps(strings), codes)
        return out[0], out[1]

    def _who(self):
        """This process and thread as JSON fragments: (with the thread's name, without it); cached."""
        ident = self.ident()
        thread = self.threads.get(ident)
        try:
            # Thread's own attributes: its name/native_id properties are Python calls.
            tid, name = thread._native_id, thread._name
        except AttributeError:
            tid, name = self.native_tid(), self.thread_name()
        cached = self.who_cache.get(ident)
        if cached is not None and cached[0] == self.pid and cached[1] == tid and cached[2] is name:
            return cached[3]
        if len(self.who_cache) >= self.WHO_CACHE_MAX:
            self.who_cache.clear()
        bare = ',"src":"agent","pid":%d,"tid":%s' % (self.pid, "null" if tid is None else int(tid))
        named = bare + ',"thread":' + self.encode_str(name if name.__class__ is str else str(name))
        self.who_cache[ident] = (self.pid, tid, name, (named, bare))
        return named, bare

    def thread_name(self):
        try:
            return self.threads[self.ident()].name
        except Exception:
            return ""

    def stack(self, skip):
        """The caller's short stack, innermost first, as ((id(code), lasti, ...), (code, ...)).

        Line numbers are worked out from ``f_lasti`` when the stack is first formatted
        (``_format_stack``): ``f_lineno`` scans the code's line table on every read, which
        was the largest single cost of a connection event (tests/bench/agent_path.py)."""
        key = []
        codes = []
        try:
            frame = self.getframe(skip + 1)
            depth = self.STACK_DEPTH
            while frame is not None and len(codes) < depth:
                code = frame.f_code
                codes.append(code)
                key.append(id(code))
                key.append(frame.f_lasti)
                frame = frame.f_back
        except Exception:
            pass
        return tuple(key), tuple(codes)

    def call_site(self, skip):
        """The first frame outside SQLAlchemy, the standard library and this agent."""
        try:
            frame = self.getframe(skip + 1)
            while frame is not None:
                filename = frame.f_code.co_filename
                if not self._is_library(filename) and not self._library_module(frame):
                    return "%s:%d in %s" % (filename, frame.f_lineno, frame.f_code.co_name)
                frame = frame.f_back
        except Exception:
            pass
        return "?"

    def call_chain(self, skip):
        """The program's own frames from the create_engine() call outwards, innermost first: a
        shared helper (get_session) does not hide its callers. Library and site-packages frames
        are skipped; only code objects and line numbers are read, a few strings formatted."""
        chain = []
        try:
            frame = self.getframe(skip + 1)
            walked = 0
            while frame is not None and len(chain) < self.CHAIN_DEPTH and walked < CHAIN_WALK:
                code = frame.f_code
                filename = code.co_filename
                if not self._is_library(filename) and "-packages" not in filename and not self._library_module(frame):
                    chain.append("%s:%d in %s" % (filename, frame.f_lineno, code.co_name))
                frame = frame.f_back
                walked += 1
        except Exception:
            pass
        return chain

    def _is_library(self, filename):
        if "/../" in filename:
            # A module loaded by a path of its own (SQLAlchemy's test plugin: test/../lib/sqlalchemy/...).
            filename = self.normpath(filename)
        if filename.startswith("<") or filename.startswith(self.skip_dirs):
            return True
        # The standard library, but not packages installed beside it (a non-venv site-packages).
        return filename.startswith(self.stdlib_dir) and "-packages" not in filename[len(self.stdlib_dir):]

    def _library_module(self, frame):
        """Whether ``frame`` runs code of SQLAlchemy, a driver, pytest... (events.LIBRARY_PACKAGES):
        by its module's name, so a source checkout is a library as much as an installed package
        (tests/unit/test_agent_stack_lines.py)."""
        try:
            name = frame.f_globals.get("__name__")
            if name.__class__ is not str:
                return False
            top, dot, rest = name.partition(".")
            packages = self.library_packages
            return top in packages or (dot and top + "." + rest.partition(".")[0] in packages)
        except Exception:
            return False


def _line_of(code, lasti):
    """The line of the instruction at byte offset ``lasti`` in ``code``: what ``f_lineno`` says."""
    try:
        if hasattr(code, "co_lines"):  # 3.10+
            for start, end, line in code.co_lines():
                if start <= lasti < end:
                    return line if line is not None else code.co_firstlineno
            return code.co_firstlineno
        # 3.8/3.9: co_lnotab, as PyCode_Addr2Line walks it.
        table = code.co_lnotab
        line = code.co_firstlineno
        addr = 0
        for i in range(0, len(table) - 1, 2):
            addr += table[i]
            if addr > lasti:
                break
            step = table[i + 1]
            line += step - 256 if step >= 128 else step
        return line
    except Exception:
        return 0
