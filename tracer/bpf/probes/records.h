/* ---- records: what goes to user space ----------------------------------------------------
 * The event codes, the constants the records carry, then the one record layout. */
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
#define EV_SOCK_CONNECT 11   // MySQL sockets outside the client library (PyMySQL): msock.h
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
 * the payload members' names against these declarations. 72 bytes. */
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

struct ev_sock {     // EV_SOCK_CONNECT / EV_SOCK_CLOSE (msock.h)
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
