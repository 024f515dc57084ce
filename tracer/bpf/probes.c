/*
 * trace-quit: the kernel side. Why each COM_QUIT was sent, decided where it happens.
 *
 * bcc compiles it at run time (tracer/bpf/compile.py, which puts the files included below in
 * place of their #include lines: one text, whatever the working directory). Each file is one
 * concern; the order matters only in that a file uses what the files before it declare.
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
 */
#include "probes/records.h"      /* what goes to user space: event codes and layouts (decode.py) */
#include "probes/common.h"       /* parameters, per-thread state, maps, config, ring buffer, registers */
#include "probes/mysqlclient.h"  /* mysqlclient's close()/dealloc: which one is calling mysql_close */
#include "probes/client.h"       /* the client library: mysql_real_connect, mysql_close */
#include "probes/cpython.h"      /* CPython: GC brackets and finalisation */
#include "probes/wire.h"         /* sends inside mysql_close, the server's end seen on the socket */
#include "probes/msock.h"        /* MySQL sockets the client library does not own (PyMySQL) */
#include "probes/syscalls.h"     /* the two raw tracepoints every system call goes through */
#include "probes/signals.h"      /* stop signals sent to the traced processes */
#include "probes/tree.h"         /* the traced process tree */
