"""What the interpreter and mysqlclient in front of us let the tracer attribute, said precisely.

Three things differ between builds that cannot all be run here, and each would otherwise
turn into a silently wrong answer:

* **The collector.** CPython 3.8-3.13, 3.14.5 on and 3.15 collect by generation: a collection's
  generation is the age of what it scanned. 3.14.0-3.14.4 collect incrementally: automatic
  collections are "young" or an increment of the old generation (reported as 1), and a full
  one only comes from ``gc.collect()``. Decided from what the interpreter reports at start
  (``gc.get_threshold()``, ``gc.get_stats()``) and its version. Free-threaded builds (``Py_GIL_DISABLED``) have one
  generation: every automatic collection scans everything and reports 0. Where the number is
  not an age, the kernel side records the bracket (the cause stays "gc") but not a generation.
* **The object header.** ``PyObject_HEAD`` is 16 bytes in the default build and 32 in the
  free-threaded one (``ob_tid``, flags/mutex/gc bits/local refcount, shared refcount,
  ``ob_type``), so the ``MYSQL`` inside a connection object moves. The interpreter reports
  ``object.__basicsize__``; here it is checked against the build.
* **mysqlclient's connection struct.** ``PyObject_HEAD; MYSQL connection; ...`` -- releases
  that add fields (a per-connection lock after ``open``) keep ``MYSQL`` first, but that is
  checked, not assumed: ``_mysql_ConnectionObject_close`` passes ``&self->connection`` to
  ``mysql_close`` as ``lea disp(%reg),%rdi`` just before the call, and ``disp`` must equal
  the object header's size, or closes are not attributed to close()/dealloc.
"""

import re

#: sizeof(PyObject) by build (Include/object.h).
HEADER_DEFAULT = 16
HEADER_FREE_THREADED = 32

GENERATIONAL = "generational"
INCREMENTAL = "incremental"
FREE_THREADED = "free-threaded"
UNKNOWN = "unknown"


def collector(version, gil_disabled=False, thresholds=None, generations=None):
    """(collector, generation_is_age, sentence) for a CPython ``version`` tuple, decided from what
    the interpreter reports at start where it reports it: ``thresholds`` (``gc.get_threshold()``)
    and ``generations`` (``len(gc.get_stats())``).

    3.14.0-3.14.4 are incremental by their version (their third threshold is meaningless). From
    3.14.5 a build is generational when it reports three generations and a real third threshold
    (3.14.5+ and 3.15 measured so), or, without that report, when it is no newer than 3.15; a
    build that reports otherwise, or a newer one that reports nothing, is unknown, never guessed.
    ``sentence`` (None when generations are ages) names the layer it applies to."""
    if gil_disabled:
        return (FREE_THREADED, False,
                "kernel layer: free-threaded build: one generation, every automatic collection scans all objects "
                "and reports generation 0; collections are attributed (cause gc) without a generation")
    if not version:
        return UNKNOWN, False, "kernel layer: Python version unknown: collections are attributed without a generation"
    v = tuple(version[:3]) + (0,) * (3 - len(version[:3]))
    if v[:2] < (3, 14):
        return GENERATIONAL, True, None
    if v[:2] == (3, 14) and len(version) < 3:
        return (INCREMENTAL, False,
                "kernel layer: CPython 3.14 of unknown micro version: it may collect incrementally (3.14.0-3.14.4); "
                "collections are attributed (cause gc) without a generation")
    if v[:2] == (3, 14) and v[2] <= 4:
        return (INCREMENTAL, False,
                "kernel layer: CPython %d.%d.%d collects incrementally (3.14.0-3.14.4): an automatic collection is a "
                "young collection plus an increment of the old generation, a full collection only comes from "
                "gc.collect(); collections are attributed (cause gc) without a generation" % v)
    reported = generations is not None or thresholds is not None
    says_generational = (generations in (None, 3) and (thresholds is None or (
        isinstance(thresholds, (list, tuple)) and len(thresholds) == 3 and thresholds[2] > 0)))
    if reported and says_generational:
        return GENERATIONAL, True, None
    if not reported and v[:2] <= (3, 15):
        return GENERATIONAL, True, None
    return (UNKNOWN, False,
            "kernel layer: CPython %d.%d.%d reports %s at start, not the generational collector's three "
            "generations and thresholds: collections are attributed (cause gc) without a generation" % (
                v + ("%s generations, thresholds %s" % (generations, thresholds) if reported else "nothing",)))


def expected_header(gil_disabled):
    return HEADER_FREE_THREADED if gil_disabled else HEADER_DEFAULT


# lea disp8/disp32(%base),%rdi: REX.W (48, or 49 for r8-r15 as base), 8d, ModRM reg=rdi.
_LEA_RDI = re.compile(rb"[\x48\x49]\x8d([\x78-\x7f\xb8-\xbf])", re.DOTALL)


def mysql_offsets_in_close(code):
    """Displacements ``d`` of each ``lea d(%reg),%rdi`` followed within 16 bytes by a ``call``.

    In ``_mysql_ConnectionObject_close`` that is ``&self->connection`` handed to mysql_close
    (the only call there taking a pointer into the object as its first argument)."""
    out = []
    for m in _LEA_RDI.finditer(code):
        modrm = m.group(1)[0]
        rm, mod = modrm & 7, modrm >> 6
        if rm == 4:  # SIB byte: not the simple base+disp form
            continue
        at = m.end()
        if mod == 1:
            disp, end = int.from_bytes(code[at:at + 1], "little", signed=True), at + 1
        else:
            disp, end = int.from_bytes(code[at:at + 4], "little", signed=True), at + 4
        if b"\xe8" in code[end:end + 16] and disp >= 0:
            out.append(disp)
    return out


def mysqlclient_layout(so, basicsize):
    """What mysqlclient's ``_mysql`` ELF says about its connection struct.

    Returns {"mysql_offset": int | None, "lock": bool, "verified": bool, "why": str}:
    ``verified`` when the close function's code puts MYSQL at ``basicsize``."""
    out = {"mysql_offset": None, "lock": False, "verified": False, "why": ""}
    dynstr = so.section(".dynstr")
    if dynstr is not None:
        names = so.read(dynstr["offset"], dynstr["size"])
        out["lock"] = any(n in names for n in (b"\0PyThread_acquire_lock\0", b"\0PyMutex_Lock\0"))
    s = so.symbol("_mysql_ConnectionObject_close")
    if s is None:
        out["why"] = "_mysql_ConnectionObject_close not found: the MYSQL offset is not checked"
        return out
    code = so.read(so.vaddr_to_offset(s.value), min(s.size or 512, 1024))
    offsets = sorted(set(mysql_offsets_in_close(code)))
    if basicsize in offsets:
        out.update(mysql_offset=basicsize, verified=True,
                   why="MYSQL at +%d in the connection object (read from _mysql_ConnectionObject_close)%s" % (
                       basicsize, "; this mysqlclient keeps a per-connection lock, which does not move it"
                       if out["lock"] else ""))
    elif len(offsets) == 1:
        out.update(mysql_offset=offsets[0],
                   why="MYSQL at +%d in this mysqlclient's connection object, not +%d (the object header): "
                       "its close()/dealloc are not attributed" % (offsets[0], basicsize))
    else:
        out["why"] = ("the MYSQL offset in _mysql_ConnectionObject_close is not decodable (%s): "
                      "assumed at +%d, unverified" % (offsets or "no lea before a call", basicsize))
    return out
