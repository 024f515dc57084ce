/* ---- wire: sends made by a thread inside mysql_close, the server's end on the socket -------
 * While a thread is inside mysql_close (between its entry and return probes), its
 * write/writev/sendto/sendmsg calls are recorded with their length and first 16 bytes.
 * COM_QUIT is exactly 01 00 00 00 01; a TLS record header (0x14..0x17, 0x03) means the
 * bytes are encrypted. The syscall tracepoints are system wide, but a thread not inside a
 * traced mysql_close costs one lookup.
 */

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
