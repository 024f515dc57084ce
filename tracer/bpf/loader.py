"""The dynamic loader's search, emulated: which file a ``DT_NEEDED`` name resolves to for a given
object (``DT_RPATH``/``DT_RUNPATH`` with ``$ORIGIN``, ``LD_LIBRARY_PATH``, ``/etc/ld.so.cache``),
parsed here: ``ldd`` is never run on files we do not trust.
"""

import os

from trace_quit.tracer.bpf import elf as elflib


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
