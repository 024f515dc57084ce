"""The metrics endpoint's HTTP side: one thread, bounded connections, slow clients idled out.

Any local user can connect to the port (it is on loopback by default, not private to us). So:

- one thread and a selector, no thread per connection: an idle socket costs one fd only;
- at most ``MAX_CONNECTIONS`` open at once; a new connection beyond that evicts the oldest
  one still waiting for its request, so a scraper always gets in however many sockets others
  hold open (tests/unit/test_metrics_http.py; tests/security/test_forged_records.py: 2,000 idle sockets);
- a request must arrive whole within ``REQUEST_TIMEOUT_S`` and be at most ``MAX_REQUEST``
  bytes; an answer not taken within ``SEND_TIMEOUT_S`` is dropped;
- a scrape that fails to render answers 500 for that scrape only (the collector itself is
  built not to fail: tracer/metrics.py).

``first_scrape``/``last_scrape`` record who read the metrics (``peer_identity``: the address and, on this host,
the uid owning the client's socket) and when, so ``--metrics-linger`` can wait for the
scrapers it was serving rather than for anyone's first scrape.
"""

import selectors
import socket
import threading
import time

MAX_CONNECTIONS = 64
MAX_REQUEST = 8192
REQUEST_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0
_TICK_S = 0.25


def _hex_addr(host, port, family):
    """An address as /proc/net/tcp{,6} writes it (the kernel's byte order, upper-case hex)."""
    packed = socket.inet_pton(family, host)
    if family == socket.AF_INET:
        text = packed[::-1].hex()
    else:  # four 32-bit words, each in host (little-endian) order
        text = "".join(packed[i:i + 4][::-1].hex() for i in range(0, 16, 4))
    return "%s:%04X" % (text.upper(), port)


def peer_identity(conn):
    """("uid", n) for a client on this host (the owner of its socket, from /proc/net/tcp), else
    ("addr", its address)."""
    try:
        peer = conn.getpeername()
        local = conn.getsockname()
    except OSError:
        return ("addr", "?")
    family = conn.family
    want_local = _hex_addr(peer[0], peer[1], family)     # the client's socket: its local is our peer
    want_remote = _hex_addr(local[0], local[1], family)
    path = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 7 and cols[1] == want_local and cols[2] == want_remote:
                    return ("uid", int(cols[7]))
    except (OSError, ValueError):
        pass
    return ("addr", peer[0])


class _Conn:
    __slots__ = ("sock", "t_start", "buf", "out", "deadline")

    def __init__(self, sock, now):
        self.sock = sock
        self.t_start = now
        self.buf = b""
        self.out = None          # the answer being sent; None while the request is read
        self.deadline = now + REQUEST_TIMEOUT_S


class Endpoint:
    """Serve ``render(accept_header) -> (status, content_type, body)`` on ``addr:port``."""

    def __init__(self, addr, port, render):
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(sockaddr)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except BaseException:
            self.listener.close()
            raise
        self.port = self.listener.getsockname()[1]
        self.render = render
        self.conns = {}
        self.evicted = 0
        self.first_scrape = {}   # identity -> monotonic time of its first answered scrape
        self.last_scrape = {}    # identity -> of its last
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="trace-quit-metrics-http", daemon=True)
        self._thread.start()

    # --- the loop --------------------------------------------------------------------------
    def _loop(self):
        while not self._stop.is_set():
            try:
                ready = self._sel.select(_TICK_S)
            except OSError:
                ready = []
            now = time.monotonic()
            for key, _ in ready:
                try:
                    if key.fileobj is self.listener:
                        self._accept(now)
                    else:
                        self._service(self.conns.get(key.fileobj), now)
                except Exception:  # one client's trouble is never the endpoint's
                    self._close(self.conns.get(key.fileobj))
            for c in [c for c in self.conns.values() if now > c.deadline]:
                self._close(c)
        for c in list(self.conns.values()):
            self._close(c)

    def _accept(self, now):
        for _ in range(256):  # a burst at once; the rest on the next round
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of fds (EMFILE) or aborted: shed the oldest waiting client
                self._evict_oldest()
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                self._evict_oldest()
            sock.setblocking(False)
            c = _Conn(sock, now)
            self.conns[sock] = c
            self._sel.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self):
        waiting = [c for c in self.conns.values() if c.out is None] or list(self.conns.values())
        if waiting:
            self.evicted += 1
            self._close(min(waiting, key=lambda c: c.t_start))

    def _service(self, c, now):
        if c is None:
            return
        if c.out is None:
            data = c.sock.recv(4096)
            if not data:
                self._close(c)
                return
            c.buf += data
            if b"\r\n\r\n" not in c.buf and b"\n\n" not in c.buf:
                if len(c.buf) > MAX_REQUEST:
                    self._close(c)
                return
            c.out = self._answer(c)
            c.deadline = now + SEND_TIMEOUT_S
            self._sel.modify(c.sock, selectors.EVENT_WRITE)
        sent = c.sock.send(c.out)
        c.out = c.out[sent:]
        if not c.out:
            self._close(c)

    def _answer(self, c):
        head, _, _ = c.buf.partition(b"\n")
        parts = head.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return _response(405, "text/plain; charset=utf-8", b"only GET\n", head_only=False)
        accept = ""
        for line in c.buf.split(b"\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        try:
            status, ctype, body = self.render(accept)
        except Exception as exc:  # this scrape only; the next one renders again
            status, ctype, body = 500, "text/plain; charset=utf-8", ("error: %s\n" % type(exc).__name__).encode()
        if status == 200:
            identity = peer_identity(c.sock)
            now = time.monotonic()
            with self._lock:
                if identity not in self.first_scrape and len(self.first_scrape) < 1024:
                    self.first_scrape[identity] = now
                if identity in self.first_scrape:
                    self.last_scrape[identity] = now
        return _response(status, ctype, body, head_only=parts[0] == "HEAD")

    def _close(self, c):
        if c is None:
            return
        self.conns.pop(c.sock, None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            c.sock.close()
        except OSError:
            pass

    # --- the owner's side ------------------------------------------------------------------
    def scrapers_at(self, t):
        """The identities that had scraped by monotonic time ``t``."""
        with self._lock:
            return {who for who, when in self.first_scrape.items() if when <= t}

    def scraped_after(self, t):
        """The identities answered after monotonic time ``t``."""
        with self._lock:
            return {who for who, when in self.last_scrape.items() if when > t}

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._sel.close()
        except OSError:
            pass
        self.listener.close()


_REASONS = {200: "OK", 405: "Method Not Allowed", 500: "Internal Server Error"}


def _response(status, ctype, body, head_only):
    head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, _REASONS.get(status, "Error"), ctype, len(body))).encode("latin-1")
    return head if head_only else head + body


class MetricsError(Exception):
    """The metrics endpoint cannot be served (one line, with the fix)."""


class MetricsServer:
    """The HTTP endpoint (``Endpoint``: bounded, one thread) serving one tracer/metrics.py Exporter."""

    def __init__(self, exporter, addr, port):
        from prometheus_client import CollectorRegistry

        self.exporter = exporter
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(exporter)
        try:
            self.endpoint = Endpoint(addr, port, self._render)
        except OSError as exc:
            import errno

            if exc.errno == errno.EADDRINUSE:
                raise MetricsError("port %d on %s is in use: choose another --metrics-port" % (port, addr)) from None
            raise MetricsError("cannot serve metrics on %s:%d (%s): check --metrics-addr"
                               % (addr, port, exc.strerror or exc)) from None
        self.port = self.endpoint.port

    def _render(self, accept):
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return 200, content_type, encoder(self.registry)

    def linger(self, seconds):
        """After the run, for at most ``seconds``: wait until every scraper that read the metrics
        while the program ran has read the final counts. Anyone else's scrape does not end it,
        and with no scraper seen during the run it serves the whole time (tests/unit/test_metrics_http.py)."""
        deadline = time.monotonic() + max(0.0, seconds)
        finished = self.exporter.finished_t
        if finished is None:
            return
        wanted = self.endpoint.scrapers_at(finished)
        while time.monotonic() < deadline:
            if wanted and wanted <= self.endpoint.scraped_after(finished):
                return
            time.sleep(0.05)

    def close(self):
        self.endpoint.close()
