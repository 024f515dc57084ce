"""The agent's SQLAlchemy hooks: Engines created and disposed of, and their pools' events.

``create_engine`` is wrapped wherever SQLAlchemy exposes it (``engine_create``, with the
program's call site and its chain of callers; attached to a running program, attach.py
wraps ``Engine.__init__`` instead), ``Engine.dispose`` too (``engine_dispose``); a weak
reference per Engine says ``engine_destroy`` and why (tracer/agent/collector.py); each
Engine's pool reports its events (``pool``) with the connection they concern, named the way
its driver's records name it (``conn_of``).

Loaded by runtime.py; its hook runs when the program imports ``sqlalchemy``
(tracer/agent/imports.py). ``SQLAlchemyEngines`` is a part of the ``Agent``.
"""

import os
import sys

from _trace_quit_agent.imports import report_module

SQLALCHEMY_MODULE = "sqlalchemy"
POOL_EVENTS = ("connect", "checkout", "checkin", "close", "detach", "close_detached",
               "invalidate", "soft_invalidate")


class SQLAlchemyEngines:
    """The agent's side of SQLAlchemy: the Engines alive, and their records."""

    def _init_sqlalchemy(self):
        self.engines = {}        # engine id -> weakref

    def on_engine_create(self, engine, site, chain=None):
        engine_id = id(engine)
        pool = getattr(engine, "pool", None)
        info = {"engine": engine_id, "site": site, "pool_class": type(pool).__name__}
        if chain:
            info["chain"] = chain
        # hide_password hides the userinfo only: ``?passwd=`` in the query stays, so the
        # redaction runs on every form (tests/security/test_secrets_in_urls.py).
        try:
            info["url"] = self.ev.redact(engine.url.render_as_string(hide_password=True))
        except Exception:
            info["url"] = self.ev.redact(str(getattr(engine, "url", "")))
        try:
            info["pool_size"] = pool.size()
            info["max_overflow"] = pool._max_overflow
        except Exception:
            pass
        try:
            self.engines[engine_id] = self.weakref(
                engine, self._destroyed_callback(self.engines, engine_id, self.ev.ENGINE_DESTROY, "engine"))
        except TypeError:
            pass
        self.emit(self.ev.ENGINE_CREATE, **info)
        if pool is not None:
            self._listen_pool(engine_id, pool)

    def _listen_pool(self, engine_id, pool):
        from sqlalchemy import event

        for name in POOL_EVENTS:
            try:
                event.listen(pool, name, self._pool_listener(engine_id, name))
            except Exception:
                pass  # an event this SQLAlchemy version does not have

    def _pool_listener(self, engine_id, name):
        def listener(*args, agent=self, engine_id=engine_id, name=name):
            try:
                dbapi_connection = args[0] if args else None
                conn = agent.conn_of(dbapi_connection) if dbapi_connection is not None else None
                fields = {"engine": engine_id, "ev": name, "conn": conn}
                if len(args) > 2 and isinstance(args[2], BaseException):
                    # invalidate/soft_invalidate: the error is the evidence of a server that went away
                    exc = args[2]
                    fields["error"] = agent.ev.redact("%s: %s" % (type(exc).__name__, exc))[:200]
                agent.emit(agent.ev.POOL, **fields)
            except Exception:
                pass
        return listener

    def conn_of(self, dbapi_connection):
        """The ``conn`` key of a DB-API connection: its MYSQL*, or a socket's inode (PyMySQL,
        mysql-connector, and the asyncio drivers behind SQLAlchemy's adapter's ``_connection``)."""
        tracker = self.pymysql
        if tracker is not None:
            key = tracker.conn_of(dbapi_connection)
            if key is not None:
                return key
        if self.socket_trackers:
            inner = getattr(dbapi_connection, "_connection", None)
            for tracker in self.socket_trackers.values():
                for obj in (dbapi_connection, inner):
                    key = tracker.conn_of(obj) if obj is not None else None
                    if key is not None:
                        return key
        return id(dbapi_connection) + self.conn_offset

    def on_engine_dispose(self, engine):
        self.emit(self.ev.ENGINE_DISPOSE, engine=id(engine))


def hook(agent, module):
    """Wrap create_engine wherever SQLAlchemy exposes it, and Engine.dispose."""
    try:
        create = sys.modules["sqlalchemy.engine.create"]
        base = sys.modules["sqlalchemy.engine.base"]
    except KeyError:
        return
    original = create.create_engine
    if getattr(original, "_trace_quit_hooked", False) or getattr(base.Engine.dispose, "_trace_quit_hooked", False):
        return

    def create_engine(*args, **kwargs):
        engine = original(*args, **kwargs)
        try:
            agent.on_engine_create(engine, agent.call_site(1), agent.call_chain(1))
        except Exception:
            pass
        return engine

    create_engine.__name__ = original.__name__
    create_engine.__doc__ = original.__doc__
    create_engine.__wrapped__ = original
    create_engine._trace_quit_hooked = True
    # Attached to a running program: its modules bound create_engine at import time, so a new
    # module attribute would go unseen; tracer/agent/attach.py wraps Engine.__init__ instead
    # (and wrapping both would announce an Engine twice).
    for name in () if agent.attached else ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.engine.create"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "create_engine", None) is original:
            mod.create_engine = create_engine
            agent.restore.append((mod, "create_engine", original, create_engine))

    original_dispose = base.Engine.dispose

    def dispose(self, *args, **kwargs):
        try:
            agent.on_engine_dispose(self)
        except Exception:
            pass
        return original_dispose(self, *args, **kwargs)

    dispose.__name__ = "dispose"
    dispose.__wrapped__ = original_dispose
    dispose._trace_quit_hooked = True
    base.Engine.dispose = dispose
    agent.restore.append((base.Engine, "dispose", original_dispose, dispose))
    agent.skip_dirs = agent.skip_dirs + (os.path.dirname(module.__file__),)
    report_module(agent, "sqlalchemy")


def hooks():
    """module name -> hook(agent, module), for the import hook."""
    return {SQLALCHEMY_MODULE: hook}
