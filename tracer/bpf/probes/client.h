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

/* The connection's socket, seen from the system calls (syscalls.h): connect() inside
 * mysql_real_connect is the connection's socket. */
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
