"""Reading a BPF ring buffer map directly from its memory mapping, in batches.

bcc's ``open_ring_buffer`` hands every record to a Python callback through ctypes (about
1 us per record before any decoding), which caps a tracer at a few hundred thousand events
per second with nothing else done. The ring buffer's layout is a stable kernel ABI
(``include/uapi/linux/bpf.h``, ``kernel/bpf/ringbuf.c``; libbpf's ``ringbuf.c`` reads it the
same way), so we map it and read whole runs of committed records at once:

* page 0 of the map (read-write): the consumer position (u64), which only we write;
* from page 1 (read-only): the producer position (u64) on its own page, then the data
  area, mapped twice in a row by the kernel so that a record that wraps around the end is
  still contiguous in memory;
* each record: an 8-byte header (u32 length with BUSY bit 31 while reserved and DISCARD
  bit 30, u32 page offset), then the sample, padded to 8 bytes.

``read(max_bytes)`` returns the bytes of the committed records from the consumer position
up to the first busy one (a copy, so the caller can decode at leisure) and ``advance(n)``
gives that space back to the kernel. Positions are 8-byte aligned u64 loads and stores
(ctypes), atomic on x86-64; x86's ordering makes the kernel's release/acquire pairing hold.
"""

import ctypes
import os
import struct

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_U32 = struct.Struct("<I")


class RingBufferError(OSError):
    """The ring buffer could not be mapped."""


def _mmap(length, prot, fd, offset):
    addr = _libc.mmap(None, length, prot, MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise RingBufferError(err, "mmap of the BPF ring buffer failed: %s" % os.strerror(err))
    return addr


class RingReader:
    """Batch reader of one BPF_MAP_TYPE_RINGBUF map (``map_fd``, ``size`` bytes of data)."""

    def __init__(self, map_fd, size):
        if size <= 0 or size & (size - 1):
            raise ValueError("ring buffer size must be a power of two")
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.size = size
        self.mask = size - 1
        self._cons_addr = _mmap(self.page, PROT_READ | PROT_WRITE, map_fd, 0)
        try:
            self._prod_len = self.page + 2 * size
            self._prod_addr = _mmap(self._prod_len, PROT_READ, map_fd, self.page)
        except RingBufferError:
            _libc.munmap(self._cons_addr, self.page)
            raise
        self._cons = ctypes.c_uint64.from_address(self._cons_addr)
        self._prod = ctypes.c_uint64.from_address(self._prod_addr)
        self._data = self._prod_addr + self.page
        self.closed = False

    def read(self, max_bytes=None):
        """A copy of the committed records from the consumer position (headers included).

        Whole records, in order, stopping before the first one still being written (BUSY);
        discarded records stay in (their header says so; callers skip them). Release the
        space with ``advance(len(data))``.
        """
        if self.closed:
            return b""
        cons = self._cons.value
        avail = self._prod.value - cons
        if avail <= 0:
            return b""
        if max_bytes is not None and avail > max_bytes:
            avail = max_bytes
        buf = ctypes.string_at(self._data + (cons & self.mask), avail)  # contiguous: mapped twice
        off = 0
        unpack = _U32.unpack_from
        while off + HEADER <= avail:
            length = unpack(buf, off)[0]
            if length & BUSY_BIT:
                break
            step = HEADER + (((length & ~(BUSY_BIT | DISCARD_BIT)) + 7) & ~7)
            if off + step > avail:
                break
            off += step
        return buf if off == len(buf) else buf[:off]

    def advance(self, nbytes):
        """Release ``nbytes`` (whole records returned by ``read``) back to the kernel."""
        if nbytes and not self.closed:
            self._cons.value = self._cons.value + nbytes

    def close(self):
        if not self.closed:
            self.closed = True
            self._cons = self._prod = None
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, self.page)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
