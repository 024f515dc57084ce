/* ---- msock: MySQL sockets the client library does not own (PyMySQL) ----------------
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
 * headers cannot be trusted to reach). Separate maps: the files before this one do not use them. */
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

/* The two functions below are the only ones that touch shared state outside this file:
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
