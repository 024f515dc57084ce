/*
 * trace-quit: the kernel side. Why each COM_QUIT was sent, decided where it happens.
 *
 * Loaded by tracer/bpf/session.py (bcc compiles it at run time). Compile-time parameters
 * (-D flags) depend only on the machine:
 *   RINGBUF_PAGES          ring buffer size in pages (power of two).
 *   TP_*                   field offsets of the tracepoints used, read from tracefs format
 *                          files at load time (sched_process_exit changed across kernels).
 *   OWN_PT_REGS            declare struct pt_regs here instead of including kernel headers.
 * What depends on the traced program is in the `config` array (CFG_*), chosen per run by
 * tracer/bpf/resolve.py and written by session.py before attaching:
 *   CONN_OFFSET            object.__basicsize__ of the traced interpreter: the MYSQL* that
 *                          mysql_close receives is self + CONN_OFFSET (mysqlclient's
 *                          _mysql_ConnectionObject starts with PyObject_HEAD, then MYSQL).
 *   GC_START_ARG_*,        how to read USDT python:gc__start's generation and gc__done's
 *   GC_DONE_ARG_*          collected count: KIND 1 register, 2 memory at reg+OFF, 3 constant;
 *                          REG is a byte offset into struct pt_regs.
 *   GC_SYM_GEN_REG         pt_regs offset of the generation argument of the collection
 *                          function (gc_collect_main & co) when there is no USDT; -1 when
 *                          unknown (3.8's GCC clones collect.constprop.N).
 *   LAST_ERRNO_OFF         offsetof(MYSQL, net.last_errno), decoded from the client library's
 *                          own mysql_errno (resolve.last_errno_offset); -1 when unknown.
 *   AFTER_ATEXIT           1: shutdown starts at on_after_atexit (resolve.AFTER_ATEXIT).
 *
 * Attribution at mysql_close (no uretprobes on CPython or mysqlclient code needed):
 *   _mysql_ConnectionObject_close(self) / _dealloc(self) entries store, per thread, the
 *   last {kind, self}. mysqlclient calls mysql_close(&self->connection) from exactly one of
 *   them (mysqlclient's MySQLdb/_mysql.c), with no Python code in between, so at mysql_close(mysql):
 *     mysql == last.self + CONN_OFFSET and kind == close        -> explicit_close
 *     ... kind == dealloc, on the finalising thread after atexit     -> shutdown (on_after_atexit)
 *     ... kind == dealloc, inside a GC collection on this thread  -> gc (+ generation)
 *     ... kind == dealloc otherwise                              -> refcount
 *     no match                                                   -> unknown
 *   "shutdown" is per thread on purpose: Py_FinalizeEx first joins non-daemon threads
 *   (threading._shutdown) and those keep doing real work, so a GC on a worker during
 *   that join is still a gc, not a shutdown.
 *
 * Wire: while a thread is inside mysql_close (between its entry and return probes), its
 * write/writev/sendto/sendmsg calls are recorded with their length and first 16 bytes.
 * COM_QUIT is exactly 01 00 00 00 01; a TLS record header (0x14..0x17, 0x03) means the
 * bytes are encrypted. The syscall tracepoints are system wide, but a thread not inside a
 * traced mysql_close costs one lookup.
 *
 * The server ended it first (cause "server", decided in analysis from this evidence):
 *   - at mysql_close entry, the handle's socket pointer (MYSQL starts with NET, whose first
 *     member is the pvio/vio pointer in libmariadb and MySQL's client alike) and its
 *     net.last_errno: the library drops the socket (pointer NULL) after a failed read or
 *     write (2013 lost connection, 2006 gone away), and then sends no COM_QUIT;
 *   - the connection's socket: mysql_real_connect's last connect() fd is remembered per
 *     (tgid, fd); a read/recvfrom on it returning 0 (EOF) or a read/write failing with
 *     ECONNRESET/EPIPE/ETIMEDOUT emits EV_PEER_END once, before any client close;
 *   - inside mysql_close: the result of each send (the COM_QUIT write fails with EPIPE when
 *     the server already closed a Unix socket) and the TCP state the client's close() left:
 *     CLOSE_WAIT (the server's FIN had arrived first) or ESTABLISHED (client closed first).
 *
 * Process tree: `traced` is a bitmap of tgids, seeded by user space with the corked root pid,
 * extended at task_newtask for non-thread clones of a traced process, pruned at exit.
 *
 * Output: one ring buffer, submitted with BPF_RB_NO_WAKEUP (user space drains it every
 * ~20 ms; waking the reader per event cost ~7x more when measured, tests/bench/throughput.py). Every reserve is counted
 * in `counters`: [0] emitted, [1] dropped (reserve failed: buffer full).
 */
/* Compile time is most of the tracer's start-up, and most of it is kernel headers: with
 * OWN_PT_REGS the x86-64 user ABI layout of struct pt_regs (uapi/asm/ptrace.h, the same
 * offsets resolve.PT_REGS uses) is declared here instead of including it (~0.8 s instead of
 * ~1.3 s here). session.py falls back to the headers if that does not compile. */
#if OWN_PT_REGS
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#else
#include <uapi/linux/ptrace.h>
#endif
#define CLONE_THREAD 0x00010000     /* include/uapi/linux/sched.h */

#define EV_CONNECT 1
#define EV_CLOSE 2
#define EV_CLOSE_RET 3
#define EV_WIRE 4
#define EV_GC_START 5
#define EV_GC_DONE 6
#define EV_FINALIZE 7
#define EV_FORK 8
#define EV_EXIT 9
#define EV_PEER_END 10
#define EV_SOCK_CONNECT 11   // MySQL sockets outside the client library (PyMySQL): see "msock" below
#define EV_SOCK_CLOSE 12

#define OP_READ 1
#define OP_WRITE 2

#define E_PIPE 32
#define E_CONNRESET 104
#define E_TIMEDOUT 110

#define TCP_ESTABLISHED 1
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9

#define CLOSE_SOCK_PRESENT 1   // close: MYSQL.net.pvio was non-NULL at mysql_close entry
#define CLOSE_SOCK_KNOWN 2     // close: the pointer could be read
#define CLOSE_PEER_ENDED 4     // close: EV_PEER_END was seen for this connection before

#define CAUSE_UNKNOWN 0
#define CAUSE_EXPLICIT_CLOSE 1
#define CAUSE_REFCOUNT 2
#define CAUSE_GC 3
#define CAUSE_SHUTDOWN 4

#define PY_CLOSE 1
#define PY_DEALLOC 2

#define WIRE_NOT_SENT 0     // no send on this thread during mysql_close
#define WIRE_CONFIRMED 1    // a 5-byte 01 00 00 00 01 was sent
#define WIRE_ENCRYPTED 2    // only TLS records were sent
#define WIRE_OTHER 3        // bytes were sent but none was a COM_QUIT

#define HEAD_LEN 16

/* One ring buffer record: a common head, then the payload of its kind (a tagged union, so no
 * field changes meaning with the kind). tracer/bpf/decode.py declares the same layouts and
 * codes in one table; tests/unit/test_bpf_decode.py checks the codes, the layouts' sizes and
 * the payload members' names against this file. 72 bytes. */
struct ev_connect {
    u64 conn;       // MYSQL*
    u64 t0;         // mysql_real_connect entry (ns)
    u32 ok;         // it returned non-NULL
    s32 fd;         // the connection's socket (-1 unknown)
};

struct ev_close {
    u64 conn;
    u64 self;       // the _mysql.connection object (0 no match)
    s32 gen;        // gc generation, -1 unknown
    s32 last_errno; // net.last_errno at entry, -1 unknown
    u8 cause;       // CAUSE_*
    u8 flags;       // CLOSE_SOCK_* | CLOSE_PEER_ENDED
};

struct ev_close_ret {
    u64 conn;
    u64 t0;         // mysql_close entry (ns)
    u64 sends;      // send system calls inside it
    s32 send_err;   // errno of the first failed send (0 none)
    u8 wire;        // WIRE_*
    u8 tcp_from;    // TCP state before the client's close() (0 not seen)
    u8 tcp_to;      // ... and after it
    u8 fin_first;   // 1: the peer's FIN had come in before mysql_close was entered
};

struct ev_wire {
    u64 conn;
    u64 len;        // bytes the send asked for
    s64 ret;        // the send's return
    u32 fd;
    u32 hlen;       // bytes copied into head
    u8 head[HEAD_LEN];  // first bytes sent
};

struct ev_gc {
    s64 collected;  // gc_done: collected (+ uncollectable from the symbol probe)
    s32 gen;        // -1 unknown
};

struct ev_fork {
    u32 child;
};

struct ev_peer_end {
    u64 conn;
    s64 ret;        // the syscall's return (0 EOF, -errno)
    u32 fd;
    u8 op;          // OP_*
};

struct ev_sock {     // EV_SOCK_CONNECT / EV_SOCK_CLOSE (the "msock" block below)
    u64 t_greeting; // when the server greeting was read on it (ns)
    u32 fd;
    u32 sends;      // writes on it (close only)
    s32 gen;        // gc generation, -1 unknown
    u8 cause;       // CAUSE_* (close only)
    u8 wire;        // WIRE_* (close only)
};

struct event {
    u64 ts;         // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u32 pid;        // tgid
    u32 tid;        // kernel thread id
    u8 kind;        // EV_*: which member of the union follows
    u8 pad[7];
    union {
        struct ev_connect connect;
        struct ev_close close;
        struct ev_close_ret close_ret;
        struct ev_wire wire;
        struct ev_gc gc;
        struct ev_fork fork;
        struct ev_peer_end peer_end;
        struct ev_sock sock;
    };
};

struct py_entry {
    u64 self;       // the _mysql.connection object
    u64 ts;
    u32 kind;       // PY_CLOSE / PY_DEALLOC
};

struct gc_state {
    s32 gen;
    u32 depth;      // nesting of the symbol-based bracket (USDT brackets never nest)
    u64 sp;         // symbol bracket: the stack pointer at the outermost entry (its frame)
};

struct close_state {
    u64 conn;
    u64 ts;
    u32 sends;
    s32 err;        // errno of the first failed send
    u8 quit;
    u8 tls;
    u8 in_send;     // a send syscall is in flight (its exit reports the result)
    u8 cur_quit;    // ... and it is the COM_QUIT
    u8 tcp_old;     // the TCP transition the client's close() made (first one only)
    u8 tcp_new;
    u8 fin_first;   // 1: that socket's peer FIN had come in before mysql_close was entered
    u32 p_fd;       // the send in flight: fd, length, first bytes (emitted at its exit)
    u32 p_hlen;
    u64 p_len;
    u8 p_head[HEAD_LEN];
};

struct connect_state {
    u64 conn;
    u64 ts;
    s32 fd;         // the last connect()ed fd inside mysql_real_connect, -1 none
};

struct sock_key {
    u32 tgid;
    u32 fd;
};

struct conn_key {
    u64 conn;
    u32 tgid;
    u32 pad;
};

struct io_state {   // a read or write on a MySQL socket that saw the server's end
    u64 conn;
    u32 fd;
    u8 op;          // OP_READ / OP_WRITE
};

struct conn_sock {
    u32 fd;
    u32 ended;      // EV_PEER_END was emitted: the close reports it (CLOSE_PEER_ENDED)
};


/* One bit per tgid up to PID_MAX_LIMIT (4194304 on 64-bit): 512 KiB. An array lookup is
 * inlined by the verifier (~10 ns against ~50 ns for a hash), and is_traced runs on every
 * read/write/send system call of every process while we are attached. */
#define TRACED_WORDS 65536
BPF_ARRAY(traced, u64, TRACED_WORDS);
struct fin_state {
    u32 tid;        // the thread that entered Py_FinalizeEx
    u32 finalizing; // 1: its last atexit handler has run (shutdown has begun)
};

BPF_HASH(finalizing, u32, struct fin_state, 8192);   // tgid ->
BPF_TABLE("lru_hash", u32, struct py_entry, py_last, 65536);        // tid ->
BPF_TABLE("lru_hash", u32, struct gc_state, gc_thread, 65536);      // tid ->
BPF_TABLE("lru_hash", u32, struct close_state, in_close, 65536);    // tid ->
BPF_TABLE("lru_hash", u32, struct connect_state, in_connect, 65536); // tid ->
BPF_TABLE("lru_hash", struct sock_key, u64, socks, 65536);          // (tgid, fd) -> MYSQL* of a live connection
BPF_TABLE("lru_hash", struct conn_key, struct conn_sock, conn_fds, 65536);  // (MYSQL*, tgid) -> its socket
BPF_TABLE("lru_hash", u64, u64, fin_in, 16384);                     // TCP sock -> when the peer's FIN came in (CLOSE_WAIT)
BPF_PERCPU_ARRAY(counters, u64, 2);

/* What depends on the traced program is read at run time from `config` (written by
 * session.py before any probe is attached, session.CONFIG names the slots), not compiled
 * in: the program's text then depends only on this file and the kernel, so it compiles
 * while the command is still being resolved (session.start_compile, start-up). */
#define CFG_CONN_OFFSET 0
#define CFG_LAST_ERRNO_OFF 1
#define CFG_AFTER_ATEXIT 2
#define CFG_GC_SYM_GEN_REG 3
#define CFG_GC_START_ARG 4      /* KIND, REG, OFF, SIZE, SIGNED */
#define CFG_GC_DONE_ARG 9       /* KIND, REG, OFF, SIZE, SIGNED */
#define CFG_SLOTS 14
BPF_ARRAY(config, s64, CFG_SLOTS);

static __always_inline s64 cfg(u32 slot)
{
    s64 *v = config.lookup(&slot);
    return v ? *v : -1;
}
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline int is_traced(u32 tgid)
{
    u32 idx = tgid >> 6;
    u64 *w = traced.lookup(&idx);
    return w && ((*w >> (tgid & 63)) & 1);
}

static __always_inline void set_traced(u32 tgid, int on)
{
    u32 idx = tgid >> 6;
    u64 *w = traced.lookup(&idx);
    if (!w)
        return;
    u64 bit = 1ULL << (tgid & 63);
    if (on)
        __sync_fetch_and_or(w, bit);    // forks on other CPUs may touch the same word
    else
        __sync_fetch_and_and(w, ~bit);
}

static __always_inline struct event *reserve(u8 kind)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    u32 idx = e ? 0 : 1;
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;    // per-CPU slot: no atomics needed
    if (!e)
        return NULL;
    u64 id = bpf_get_current_pid_tgid();
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = kind;
    return e;
}

static __always_inline void submit(struct event *e)
{
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline u64 reg_at(struct pt_regs *ctx, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)ctx + off);
    return v;
}

/* A register chosen at run time (config): the verifier allows only constant offsets into the
 * context, so one case per slot of struct pt_regs (21 on x86-64). */
#define REG_CASE(n) case (n) * 8: return reg_at(ctx, (n) * 8);
static __always_inline u64 reg_var(struct pt_regs *ctx, s64 off)
{
    switch (off) {
    REG_CASE(0) REG_CASE(1) REG_CASE(2) REG_CASE(3) REG_CASE(4) REG_CASE(5) REG_CASE(6)
    REG_CASE(7) REG_CASE(8) REG_CASE(9) REG_CASE(10) REG_CASE(11) REG_CASE(12) REG_CASE(13)
    REG_CASE(14) REG_CASE(15) REG_CASE(16) REG_CASE(17) REG_CASE(18) REG_CASE(19) REG_CASE(20)
    }
    return 0;
}

static __always_inline s64 extend(u64 raw, int size, int is_signed)
{
    if (size == 1)
        return is_signed ? (s64)(s8)raw : (s64)(u8)raw;
    if (size == 2)
        return is_signed ? (s64)(s16)raw : (s64)(u16)raw;
    if (size == 4)
        return is_signed ? (s64)(s32)raw : (s64)(u32)raw;
    return (s64)raw;
}

/* One USDT operand, decoded in user space into KIND/REG/OFF/SIZE/SIGNED. */
static __always_inline s64 usdt_arg(struct pt_regs *ctx, int kind, int reg, s64 off, int size, int is_signed)
{
    u64 raw = 0;
    if (kind == 1) {
        raw = reg_var(ctx, reg);
    } else if (kind == 2) {
        u64 addr = reg_var(ctx, reg) + off;
        if (size == 1)
            bpf_probe_read_user(&raw, 1, (void *)addr);
        else if (size == 2)
            bpf_probe_read_user(&raw, 2, (void *)addr);
        else if (size == 4)
            bpf_probe_read_user(&raw, 4, (void *)addr);
        else
            bpf_probe_read_user(&raw, 8, (void *)addr);
    } else if (kind == 3) {
        return off;
    } else {
        return -1;
    }
    return extend(raw, size, is_signed);
}

/* ---- mysqlclient: which Python-level function is about to call mysql_close ---------- */

static __always_inline int py_enter(struct pt_regs *ctx, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct py_entry pe = {};
    pe.self = PT_REGS_PARM1(ctx);
    pe.ts = bpf_ktime_get_ns();
    pe.kind = kind;
    py_last.update(&tid, &pe);
    return 0;
}

int on_py_close(struct pt_regs *ctx) { return py_enter(ctx, PY_CLOSE); }
int on_py_dealloc(struct pt_regs *ctx) { return py_enter(ctx, PY_DEALLOC); }

/* ---- the client library ---------------------------------------------------------------- */

int on_connect(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct connect_state cs = {};
    cs.conn = PT_REGS_PARM1(ctx);
    cs.ts = bpf_ktime_get_ns();
    cs.fd = -1;
    in_connect.update(&tid, &cs);
    return 0;
}

int on_connect_ret(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct connect_state *cs = in_connect.lookup(&tid);
    if (!cs)
        return 0;
    int ok = PT_REGS_RC(ctx) != 0;
    if (ok && cs->fd >= 0) {
        struct sock_key sk = {};
        sk.tgid = id >> 32;
        sk.fd = cs->fd;
        u64 conn = cs->conn;
        socks.update(&sk, &conn);
        struct conn_key ck = {};
        ck.conn = conn;
        ck.tgid = sk.tgid;
        struct conn_sock cv = {};
        cv.fd = cs->fd;
        conn_fds.update(&ck, &cv);
    }
    struct event *e = reserve(EV_CONNECT);
    if (e) {
        e->connect.conn = cs->conn;
        e->connect.ok = ok;
        e->connect.t0 = cs->ts;
        e->connect.fd = cs->fd;
        submit(e);
    }
    in_connect.delete(&tid);
    return 0;
}

/* The connection's socket is no longer watched once the client closes it (or the fd goes);
 * returns CLOSE_PEER_ENDED if the server's end had been seen on it. */
static __always_inline u8 forget_conn(u32 tgid, u64 conn)
{
    struct conn_key ck = {};
    ck.conn = conn;
    ck.tgid = tgid;
    struct conn_sock *cv = conn_fds.lookup(&ck);
    if (!cv)
        return 0;
    u8 ended = cv->ended ? CLOSE_PEER_ENDED : 0;
    struct sock_key sk = {};
    sk.tgid = tgid;
    sk.fd = cv->fd;
    socks.delete(&sk);
    conn_fds.delete(&ck);
    return ended;
}

/* Why an object being destroyed on this thread now is: the kernel's evidence for a close
 * from a destructor (mysqlclient's _dealloc, or a PyMySQL socket's last close). Shutdown once
 * this thread, the finalising one, ran the last atexit handler (fin_state.finalizing), else
 * inside a GC bracket on this thread (with its generation), else a reference count reaching
 * zero. analysis/attribute.py weighs it against the agent's (docs/causes.md). */
static __always_inline u8 destroy_context(u32 tgid, u32 tid, s32 *gen)
{
    struct fin_state *fin = finalizing.lookup(&tgid);
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (fin && fin->tid == tid && fin->finalizing)
        return CAUSE_SHUTDOWN;
    if (gs && gs->depth > 0) {
        *gen = gs->gen;
        return CAUSE_GC;
    }
    return CAUSE_REFCOUNT;
}

static __always_inline int close_entry(struct pt_regs *ctx, int errno_off)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    u32 tid = (u32)id;
    u64 mysql = PT_REGS_PARM1(ctx);
    u8 cause = CAUSE_UNKNOWN;
    s32 gen = -1;
    u64 self = 0;
    struct py_entry *pe = py_last.lookup(&tid);
    if (pe && pe->self + cfg(CFG_CONN_OFFSET) == mysql) {
        self = pe->self;
        if (pe->kind == PY_CLOSE) {
            cause = CAUSE_EXPLICIT_CLOSE;
        } else {
            cause = destroy_context(tgid, tid, &gen);
        }
        py_last.delete(&tid);
    }
    // The handle's state: its socket pointer (NET.pvio / NET.vio at offset 0) and last error.
    u64 pvio = 0;
    u8 flags = 0;
    s32 last_errno = -1;
    if (mysql && bpf_probe_read_user(&pvio, sizeof(pvio), (void *)mysql) == 0) {
        flags = CLOSE_SOCK_KNOWN | (pvio ? CLOSE_SOCK_PRESENT : 0);
        if (errno_off >= 0) {
            u32 v = 0;
            if (bpf_probe_read_user(&v, sizeof(v), (void *)(mysql + errno_off)) == 0)
                last_errno = v;
        }
    }
    flags |= forget_conn(tgid, mysql);
    struct close_state st = {};
    st.conn = mysql;
    st.ts = bpf_ktime_get_ns();
    in_close.update(&tid, &st);
    struct event *e = reserve(EV_CLOSE);
    if (e) {
        e->close.conn = mysql;
        e->close.cause = cause;
        e->close.gen = gen;
        e->close.self = self;
        e->close.flags = flags;
        e->close.last_errno = last_errno;
        submit(e);
    }
    return 0;
}

int on_close(struct pt_regs *ctx) { return close_entry(ctx, (int)cfg(CFG_LAST_ERRNO_OFF)); }
int on_close_noerrno(struct pt_regs *ctx) { return close_entry(ctx, -1); }

int on_close_ret(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct close_state *st = in_close.lookup(&tid);
    if (!st)
        return 0;
    struct event *e = reserve(EV_CLOSE_RET);
    if (e) {
        e->close_ret.conn = st->conn;
        e->close_ret.sends = st->sends;
        e->close_ret.t0 = st->ts;
        e->close_ret.send_err = st->err;
        e->close_ret.tcp_from = st->tcp_old;
        e->close_ret.tcp_to = st->tcp_new;
        e->close_ret.fin_first = st->fin_first;
        if (st->quit)
            e->close_ret.wire = WIRE_CONFIRMED;
        else if (st->tls)
            e->close_ret.wire = WIRE_ENCRYPTED;
        else if (st->sends)
            e->close_ret.wire = WIRE_OTHER;
        else
            e->close_ret.wire = WIRE_NOT_SENT;
        submit(e);
    }
    in_close.delete(&tid);
    return 0;
}

/* ---- CPython: GC brackets and finalisation -------------------------------------------- */

// A collection starts on this thread: open its bracket (read at mysql_close) and say so.
// Shared by the USDT and the symbol variants; only one of them is compiled per run.
static __always_inline void gc_begin(u32 tid, s32 gen, u64 sp)
{
    struct gc_state gs = {};
    gs.gen = gen;
    gs.depth = 1;
    gs.sp = sp;
    gc_thread.update(&tid, &gs);
    struct event *e = reserve(EV_GC_START);
    if (e) {
        e->gc.gen = gen;
        submit(e);
    }
}

int on_gc_start_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    gc_begin((u32)id, (s32)usdt_arg(ctx, cfg(CFG_GC_START_ARG), cfg(CFG_GC_START_ARG + 1),
                                    cfg(CFG_GC_START_ARG + 2), cfg(CFG_GC_START_ARG + 3),
                                    cfg(CFG_GC_START_ARG + 4)), 0);
    return 0;
}

int on_gc_done_usdt(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (!gs)
        return 0;   // its start came before we attached (--pid mid-collection): no bracket to close
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->gc.collected = usdt_arg(ctx, cfg(CFG_GC_DONE_ARG), cfg(CFG_GC_DONE_ARG + 1),
                                   cfg(CFG_GC_DONE_ARG + 2), cfg(CFG_GC_DONE_ARG + 3),
                                   cfg(CFG_GC_DONE_ARG + 4));
        e->gc.gen = gs->gen;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}

/* The symbol bracket is the outermost collection function's frame, identified by the stack
 * pointer at its entry (the return probe sees that + 8, the return address popped). So the
 * bracket is right whatever the moment of attach (--pid mid-collection, issue 12):
 *  - session.attach places the return probes before the entry probes, so an entry we see
 *    always has its return seen; a return without a seen entry finds no bracket (ignored),
 *    or a nested one's and closes only when its own frame returns;
 *  - an entry at or above the open bracket's frame cannot be nested in it: that bracket is
 *    stale (its return was missed) and the new collection replaces it.
 * Pinned by tests/system/test_bpf_attach_midcollection.py. */
int on_gc_start_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 sp = PT_REGS_SP(ctx);
    struct gc_state *cur = gc_thread.lookup(&tid);
    if (cur && cur->depth > 0 && sp < cur->sp) {
        cur->depth += 1;    // deeper on the same stack: nested in the open collection
        return 0;
    }
    s64 gen_reg = cfg(CFG_GC_SYM_GEN_REG);   // -1: the build's clone of the collection function hides it
    gc_begin(tid, gen_reg >= 0 ? (s32)reg_var(ctx, gen_reg) : -1, sp);
    return 0;
}

int on_gc_done_sym(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct gc_state *gs = gc_thread.lookup(&tid);
    if (!gs)
        return 0;
    if (gs->depth > 1 && PT_REGS_SP(ctx) < gs->sp + 8) {
        gs->depth -= 1;     // a nested call returned; the bracket's own frame is still live
        return 0;
    }
    struct event *e = reserve(EV_GC_DONE);
    if (e) {
        e->gc.collected = PT_REGS_RC(ctx);  // Py_ssize_t: collected + uncollectable
        e->gc.gen = gs->gen;
        submit(e);
    }
    gc_thread.delete(&tid);
    return 0;
}

/* The cause contract (README, "Causes"): shutdown begins after the program's last atexit
 * handler has run, when the interpreter is finalising (sys.is_finalizing()); what atexit
 * handlers drop is refcount or gc. Py_FinalizeEx entry only says which thread will finalise
 * (it first joins non-daemon threads and runs the atexit handlers); on_after_atexit, at the
 * first call after the handlers (resolve.AFTER_ATEXIT), starts shutdown on that thread.
 * Without such a site (AFTER_ATEXIT 0) shutdown starts at Py_FinalizeEx entry, as it did.
 * Pinned by tests/system/test_bpf_known_causes.py (atexit rows: refcount 2, gc 3). */
static __always_inline void start_shutdown(u32 tgid, u32 tid)
{
    struct fin_state fs = {};
    fs.tid = tid;
    fs.finalizing = 1;
    finalizing.update(&tgid, &fs);
    struct event *e = reserve(EV_FINALIZE);
    if (e)
        submit(e);
}

int on_finalize(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    if (cfg(CFG_AFTER_ATEXIT) > 0) {
        struct fin_state fs = {};
        fs.tid = (u32)id;
        finalizing.update(&tgid, &fs);
    } else {
        start_shutdown(tgid, (u32)id);
    }
    return 0;
}

/* Also reached outside finalisation (3.9-3.12's _PyThreadState_DeleteExcept runs in a fork
 * child): only the thread that entered Py_FinalizeEx counts, once. */
int on_after_atexit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    struct fin_state *fs = finalizing.lookup(&tgid);
    if (!fs || fs->tid != tid || fs->finalizing)
        return 0;
    start_shutdown(tgid, tid);
    return 0;
}

/* ---- wire: sends made by a thread inside mysql_close ---------------------------------- */

static __always_inline int on_send(u64 fd, const void *buf, u64 len)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct close_state *st = in_close.lookup(&tid);
    if (!st)
        return 0;
    u8 head[HEAD_LEN] = {};
    u32 n = len < HEAD_LEN ? (u32)len : HEAD_LEN;
    if (n > 0 && n <= HEAD_LEN)
        bpf_probe_read_user(head, n, buf);
    st->sends += 1;
    st->in_send = 1;
    st->cur_quit = 0;
    if (len == 5 && head[0] == 1 && head[1] == 0 && head[2] == 0 && head[3] == 0 && head[4] == 1) {
        st->quit = 1;       // withdrawn at the syscall's exit if the send failed
        st->cur_quit = 1;
    }
    if (n >= 2 && head[0] >= 0x14 && head[0] <= 0x17 && head[1] == 0x03)
        st->tls = 1;
    // The wire event waits for the syscall's exit, which adds its result.
    st->p_len = len;
    st->p_fd = (u32)fd;
    st->p_hlen = n;
    __builtin_memcpy(st->p_head, head, HEAD_LEN);
    return 0;
}

/* Tracepoint contexts are read at the offsets of the running kernel's format files. */
static __always_inline u64 tp_u64(void *args, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)args + off);
    return v;
}

/* A system call's arguments, from the user registers saved at its entry (x86-64 syscall
 * ABI: di, si, dx, r10, r8, r9); still there at its exit, which only sets ax. */
static __always_inline u64 sys_arg(void *regs, int off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)regs + off);
    return v;
}
#define ARG0(r) sys_arg(r, 112)   /* di */
#define ARG1(r) sys_arg(r, 104)   /* si */
#define ARG2(r) sys_arg(r, 96)    /* dx */

/* The exit of read/recvfrom/write/sendto/writev/sendmsg: a send inside mysql_close (its wire
 * record), and the server's EOF / reset on a live connection's socket. Only those results
 * look further, and they take the fd from the saved registers: nothing is stored at the
 * entry of every read and write on a MySQL socket (tests/system/test_bpf_server_end.py). */
static __always_inline int io_exit(s64 ret, void *regs, u8 op)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct close_state *st = in_close.lookup(&tid);
    if (st && st->in_send) {
        st->in_send = 0;
        if (ret < 0) {
            if (!st->err)
                st->err = (s32)-ret;
            if (st->cur_quit)
                st->quit = 0;
        }
        struct event *e = reserve(EV_WIRE);
        if (e) {
            e->wire.conn = st->conn;
            e->wire.len = st->p_len;
            e->wire.fd = st->p_fd;
            e->wire.hlen = st->p_hlen;
            e->wire.ret = ret;
            __builtin_memcpy(e->wire.head, st->p_head, HEAD_LEN);
            submit(e);
        }
        return 0;
    }
    if (!((op == OP_READ && ret == 0) || ret == -E_PIPE || ret == -E_CONNRESET || ret == -E_TIMEDOUT))
        return 0;   // the common case: data moved
    if (op == OP_READ && ARG2(regs) == 0)
        return 0;   // a read of 0 bytes returns 0 without an EOF
    struct io_state cur = {};
    cur.fd = (u32)ARG0(regs);
    cur.op = op;
    struct sock_key sk = {};
    sk.tgid = bpf_get_current_pid_tgid() >> 32;
    sk.fd = cur.fd;
    u64 *conn = socks.lookup(&sk);
    if (!conn)
        return 0;   // not a live MySQL connection's socket
    cur.conn = *conn;
    // Once per connection: stop watching its fd; the close will carry CLOSE_PEER_ENDED.
    socks.delete(&sk);
    struct conn_key ck = {};
    ck.conn = cur.conn;
    ck.tgid = sk.tgid;
    struct conn_sock *cv = conn_fds.lookup(&ck);
    if (cv)
        cv->ended = 1;
    struct event *e = reserve(EV_PEER_END);
    if (e) {
        e->peer_end.conn = cur.conn;
        e->peer_end.ret = ret;
        e->peer_end.fd = cur.fd;
        e->peer_end.op = cur.op;
        submit(e);
    }
    return 0;
}

/* connect() inside mysql_real_connect: the connection's socket. */
static __always_inline int sys_connect(u64 fd)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct connect_state *cs = in_connect.lookup(&tid);
    if (cs)
        cs->fd = (s32)fd;
    return 0;
}

/* close() of a connection's socket (libmariadb's end_server after an error): stop watching the fd. */
static __always_inline int sys_close(u64 fd)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct sock_key sk = {};
    sk.tgid = tgid;
    sk.fd = (u32)fd;
    u64 *conn = socks.lookup(&sk);
    if (conn)
        forget_conn(tgid, *conn);   // a close() after a seen end finds the fd already unwatched
    return 0;
}

/* TCP state changes. System wide, one map update when a peer closes first (-> CLOSE_WAIT,
 * whichever context the softirq runs in: on loopback, the server's). Inside mysql_close,
 * the first transition of the kind the client's close() makes says who closed first: from
 * ESTABLISHED the client did; from CLOSE_WAIT the server's FIN was in, and fin_in says
 * whether it came before mysql_close was entered (the server ended the connection) or after
 * (the server answering our COM_QUIT faster than we reached close()). Transitions a softirq
 * makes on the same CPU for incoming packets are of other kinds and are ignored. */
int on_sock_state(void *args)
{
    u16 proto = 0;
    s32 olds = 0, news = 0;
    u64 sk = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), (char *)args + TP_SOCKSTATE_PROTO);
    if (proto != 6)
        return 0;
    bpf_probe_read_kernel(&olds, sizeof(olds), (char *)args + TP_SOCKSTATE_OLD);
    bpf_probe_read_kernel(&news, sizeof(news), (char *)args + TP_SOCKSTATE_NEW);
    bpf_probe_read_kernel(&sk, sizeof(sk), (char *)args + TP_SOCKSTATE_SKADDR);
    if (news == TCP_CLOSE_WAIT) {
        u64 now = bpf_ktime_get_ns();
        fin_in.update(&sk, &now);
        return 0;
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct close_state *st = in_close.lookup(&tid);
    if (!st || st->tcp_new)
        return 0;
    if (news == TCP_FIN_WAIT1 || news == TCP_LAST_ACK ||
        (news == TCP_CLOSE && (olds == TCP_ESTABLISHED || olds == TCP_CLOSE_WAIT))) {
        st->tcp_old = (u8)olds;
        st->tcp_new = (u8)news;
        if (olds == TCP_CLOSE_WAIT) {
            u64 *fin = fin_in.lookup(&sk);
            st->fin_first = fin && *fin < st->ts;
        }
    }
    if (news == TCP_CLOSE || news == TCP_LAST_ACK)
        fin_in.delete(&sk);
    return 0;
}

/* iovec-based sends: the first iovec carries the packet header. */
static __always_inline int on_send_iov(u64 fd, const void *iov)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!in_close.lookup(&tid))
        return 0;
    u64 pair[2] = {};  // struct iovec { void *iov_base; size_t iov_len; }
    bpf_probe_read_user(pair, sizeof(pair), iov);
    return on_send(fd, (const void *)pair[0], pair[1]);
}

static __always_inline int sys_sendmsg(u64 fd, u64 msg)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!in_close.lookup(&tid))
        return 0;
    u64 iov = 0;  // struct user_msghdr: name (8), namelen (4 + 4 pad), iov at 16
    bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
    return on_send_iov(fd, (const void *)iov);
}

/* ---- msock: MySQL sockets the client library does not own (PyMySQL; issue 19) ---------
 * PyMySQL speaks the protocol itself over a Python socket, so no library probe sees it.
 * A traced process's socket connect()ed outside mysql_real_connect is a candidate; the
 * first bytes read on it decide: a MySQL server greeting (packet sequence 0, protocol 10)
 * makes it a MySQL socket (EV_SOCK_CONNECT). Then the 5 bytes of COM_QUIT written on it
 * are remembered, and its close() reports whether they went out and the close's context
 * (EV_SOCK_CLOSE: as at mysql_close, shutdown on the finalising thread, gc inside a
 * collection bracket, else refcount -- or explicit_close when COM_QUIT was written there:
 * "a COM_QUIT outside any bracket", which attribute.py does not take for a close() alone).
 * Keyed by (tgid, fd): analysis pairs them with the agent's
 * records of the same fd (the agent's conn is the socket inode, which this kernel's
 * headers cannot be trusted to reach). Separate maps: nothing above depends on them. */
#define MSOCK_CANDIDATE 1   // connected outside the library; no byte read yet
#define MSOCK_HEADER 2      // a 4-byte packet header with sequence 0 was read; the next byte decides
#define MSOCK_MYSQL 3       // the server greeting was read: a MySQL connection

struct msock_state {
    u64 ts;                 // when the greeting was read
    u32 sends;              // writes on it after the greeting
    u8 state;               // MSOCK_*
    u8 quit;                // a 5-byte COM_QUIT was written on it
    u8 tls;                 // a TLS record was written on it (a COM_QUIT would be unreadable)
    u8 pad;
};

struct msock_read {
    u64 buf;
    u32 fd;
};

BPF_TABLE("lru_hash", struct sock_key, struct msock_state, msocks, 65536);  // (tgid, fd) ->
BPF_TABLE("lru_hash", u32, struct msock_read, msock_reading, 65536);        // tid -> read in flight

/* The two functions below are the only ones that touch shared state outside this block:
 * the finalising/GC bracket rule (as close_entry's) and the event layout. */
static __always_inline u8 msock_context(u32 tgid, u32 tid, s32 *gen)
{
    return destroy_context(tgid, tid, gen);   // the same rule as a mysql_close from _dealloc
}

static __always_inline void msock_emit(u8 kind, u32 fd, u32 sends, u8 cause, s32 gen, u8 wire, u64 t_greeting)
{
    struct event *e = reserve(kind);
    if (!e)
        return;
    e->sock.t_greeting = t_greeting;
    e->sock.fd = fd;
    e->sock.sends = sends;
    e->sock.gen = gen;
    e->sock.cause = cause;
    e->sock.wire = wire;
    submit(e);
}

static __always_inline void msock_connect(u64 fd)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (in_connect.lookup(&tid))
        return;     // the library's own socket: bpf_connect has it
    struct sock_key sk = {};
    sk.tgid = id >> 32;
    sk.fd = (u32)fd;
    struct msock_state ms = {};
    ms.state = MSOCK_CANDIDATE;
    msocks.update(&sk, &ms);
}

static __always_inline void msock_read_enter(u64 fd, u64 buf)
{
    u64 id = bpf_get_current_pid_tgid();
    struct sock_key sk = {};
    sk.tgid = id >> 32;
    sk.fd = (u32)fd;
    struct msock_state *ms = msocks.lookup(&sk);
    if (!ms || ms->state == MSOCK_MYSQL)
        return;
    u32 tid = (u32)id;
    struct msock_read rd = {};
    rd.buf = buf;
    rd.fd = (u32)fd;
    msock_reading.update(&tid, &rd);
}

static __always_inline void msock_read_exit(s64 ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct msock_read *rd = msock_reading.lookup(&tid);
    if (!rd)
        return;
    struct msock_read cur = *rd;
    msock_reading.delete(&tid);
    if (ret < 0)
        return;     // EAGAIN and the like: the next read decides
    struct sock_key sk = {};
    sk.tgid = id >> 32;
    sk.fd = cur.fd;
    struct msock_state *ms = msocks.lookup(&sk);
    if (!ms)
        return;
    u8 b[5] = {};
    int mysql = 0;
    if (ms->state == MSOCK_HEADER) {
        if (ret >= 1 && bpf_probe_read_user(b, 1, (void *)cur.buf) == 0)
            mysql = b[0] == 0x0a;
    } else if (ret >= 5 && bpf_probe_read_user(b, 5, (void *)cur.buf) == 0) {
        mysql = b[3] == 0 && b[4] == 0x0a;
    } else if (ret == 4 && bpf_probe_read_user(b, 4, (void *)cur.buf) == 0 && b[3] == 0) {
        ms->state = MSOCK_HEADER;
        return;
    }
    if (!mysql) {
        msocks.delete(&sk);     // another protocol: forget the socket
        return;
    }
    ms->state = MSOCK_MYSQL;
    ms->ts = bpf_ktime_get_ns();
    msock_emit(EV_SOCK_CONNECT, cur.fd, 0, 0, -1, 0, 0);
}

static __always_inline void msock_send(u64 fd, const void *buf, u64 len)
{
    struct sock_key sk = {};
    sk.tgid = bpf_get_current_pid_tgid() >> 32;
    sk.fd = (u32)fd;
    struct msock_state *ms = msocks.lookup(&sk);
    if (!ms || ms->state != MSOCK_MYSQL)
        return;
    u8 head[5] = {};
    u32 n = len < 5 ? (u32)len : 5;
    if (n > 0 && n <= 5)
        bpf_probe_read_user(head, n, buf);
    ms->sends += 1;
    if (len == 5 && head[0] == 1 && head[1] == 0 && head[2] == 0 && head[3] == 0 && head[4] == 1)
        ms->quit = 1;
    if (n >= 2 && head[0] >= 0x14 && head[0] <= 0x17 && head[1] == 0x03)
        ms->tls = 1;
}

static __always_inline void msock_close(u64 fd)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    struct sock_key sk = {};
    sk.tgid = tgid;
    sk.fd = (u32)fd;
    struct msock_state *ms = msocks.lookup(&sk);
    if (!ms)
        return;
    struct msock_state cur = *ms;
    msocks.delete(&sk);
    if (cur.state != MSOCK_MYSQL)
        return;
    u8 cause;
    s32 gen = -1;
    if (cur.tls && !cur.quit) {
        cause = CAUSE_UNKNOWN;      // encrypted: a COM_QUIT inside cannot be seen, so close() neither
    } else {
        cause = msock_context(tgid, tid, &gen);
        // A COM_QUIT outside any collection or finalisation: "explicit_close" here means only
        // that; a destructor can send one too (mysql-connector's C extension), so analysis
        // (attribute.py) keeps it as explicit only when the agent saw the close() call.
        if (cur.quit && cause == CAUSE_REFCOUNT)
            cause = CAUSE_EXPLICIT_CLOSE;
    }
    msock_emit(EV_SOCK_CLOSE, (u32)fd, cur.sends, cause, gen,
               cur.quit ? WIRE_CONFIRMED : (cur.tls ? WIRE_ENCRYPTED : WIRE_NOT_SENT), cur.ts);
}

/* ---- system calls: two raw tracepoints for all of them ---------------------------------
 * raw_syscalls:sys_enter/sys_exit through BPF_RAW_TRACEPOINT_OPEN: the program runs for
 * every system call of every process, but costs ~30 ns where it returns at once, whereas a
 * per-syscall trace event (syscalls:sys_enter_write, ...) builds a perf record before the
 * program runs (~300 ns per hooked call, measured here) and each one is another probe to
 * tear down (~65 ms each). Arguments are read from the user registers saved at entry
 * (sys_arg, above). */
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_WRITEV 20
#define NR_CONNECT 42
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46

int on_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    long nr = (long)ctx->args[1];
    if (nr != NR_WRITE && nr != NR_SENDTO && nr != NR_READ && nr != NR_RECVFROM && nr != NR_CLOSE &&
        nr != NR_CONNECT && nr != NR_WRITEV && nr != NR_SENDMSG)
        return 0;
    if (!is_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;   // the common case: one lookup for another process's call
    void *regs = (void *)ctx->args[0];
    if (nr == NR_WRITE || nr == NR_SENDTO) {
        u64 fd = ARG0(regs), len = ARG2(regs);
        msock_send(fd, (const void *)ARG1(regs), len);   // msock (PyMySQL)
        return on_send(fd, (const void *)ARG1(regs), len);
    }
    if (nr == NR_READ || nr == NR_RECVFROM) {
        msock_read_enter(ARG0(regs), ARG1(regs));        // msock (PyMySQL)
        return 0;
    }
    if (nr == NR_CLOSE) {
        msock_close(ARG0(regs));                          // msock (PyMySQL)
        return sys_close(ARG0(regs));
    }
    if (nr == NR_CONNECT) {
        msock_connect(ARG0(regs));                        // msock (PyMySQL)
        return sys_connect(ARG0(regs));
    }
    if (nr == NR_WRITEV)
        return on_send_iov(ARG0(regs), (const void *)ARG1(regs));
    if (nr == NR_SENDMSG)
        return sys_sendmsg(ARG0(regs), ARG1(regs));
    return 0;
}

int on_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
    if (!is_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;   // the common case: one array lookup for another process's call
    long nr = (long)sys_arg((void *)ctx->args[0], 120);   /* orig_ax: the call's number */
    if (nr != NR_READ && nr != NR_WRITE && nr != NR_SENDTO && nr != NR_RECVFROM && nr != NR_WRITEV && nr != NR_SENDMSG)
        return 0;
    if (nr == NR_READ || nr == NR_RECVFROM)
        msock_read_exit((s64)ctx->args[1]);               // msock (PyMySQL)
    return io_exit((s64)ctx->args[1], (void *)ctx->args[0], (nr == NR_READ || nr == NR_RECVFROM) ? OP_READ : OP_WRITE);
}

/* ---- stop signals sent to the traced processes ------------------------------------------
 * The last SIGHUP/SIGINT/SIGTERM generated for each traced process, with its sender: a kill
 * of the process group reaches the program itself, and the tracer (record.py) then does not
 * forward its own copy (session.signal_reached). */
struct sig_seen {
    u64 ts;
    u32 sig;
    u32 sender;     // tgid of the process that sent it
};
BPF_HASH(sigs_seen, u32, struct sig_seen, 1024);

int on_signal_generate(void *args)
{
    s32 sig = 0, target = 0;
    bpf_probe_read_kernel(&sig, sizeof(sig), (char *)args + TP_SIGGEN_SIG);
    if (sig != 1 && sig != 2 && sig != 15)
        return 0;
    bpf_probe_read_kernel(&target, sizeof(target), (char *)args + TP_SIGGEN_PID);
    if (target <= 0 || !is_traced((u32)target))
        return 0;
    struct sig_seen seen = {};
    seen.ts = bpf_ktime_get_ns();
    seen.sig = (u32)sig;
    seen.sender = bpf_get_current_pid_tgid() >> 32;
    u32 key = (u32)target;
    sigs_seen.update(&key, &seen);
    return 0;
}

/* ---- the traced process tree ---------------------------------------------------------- */

int on_newtask(void *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_traced(tgid))
        return 0;
    u64 flags = tp_u64(args, TP_NEWTASK_FLAGS);
    if (flags & CLONE_THREAD)
        return 0;   // a thread: its tgid is already traced
    u32 child = (u32)tp_u64(args, TP_NEWTASK_PID);
    set_traced(child, 1);
    struct event *e = reserve(EV_FORK);
    if (e) {
        e->fork.child = child;
        submit(e);
    }
    return 0;
}

int on_exit(void *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    if (!is_traced(tgid))
        return 0;
    py_last.delete(&tid);
    gc_thread.delete(&tid);
    in_close.delete(&tid);
    in_connect.delete(&tid);
    msock_reading.delete(&tid);
#if TP_EXIT_GROUP_DEAD >= 0
    u8 group_dead = 0;
    bpf_probe_read_kernel(&group_dead, 1, (char *)args + TP_EXIT_GROUP_DEAD);
    if (!group_dead)
        return 0;
#else
    if (tid != tgid)
        return 0;
#endif
    set_traced(tgid, 0);
    finalizing.delete(&tgid);
    struct event *e = reserve(EV_EXIT);
    if (e)
        submit(e);
    return 0;
}
