"""Why a tracked object died: the cyclic collector's callback, and the weak-reference callback.

``gc.callbacks`` tells the agent which collection (its id, its generation, the line that set
it off) runs on which thread; a connection or an Engine destroyed meanwhile was destroyed
by that collection, one destroyed outside any during finalisation by ``shutdown``, any
other by its reference count reaching zero.

GC callbacks do constant, cheap work: a list store and a deque append, no I/O, no locks.
Writing from a GC callback would release the GIL while the collector's "collecting" flag is
set, and another thread's ``gc.collect()`` then returns 0 without collecting; so a callback
writes only when no other Python thread exists (``_gc_flush_ok``).

``Collector`` is a part of the ``Agent`` (runtime.py), which reaches it only through ``self``.
"""

import gc

from _trace_quit_agent.stacks import CHAIN_WALK


class Collector:
    """The collections running now, those counted so far, and the causes of destructions."""

    def _init_collector(self):
        # Per-thread running collection: thread ident -> [cid, generation, t_start, frame, written, counts]
        self.collecting = {}
        self.cid = 0
        self.gc_counts = [0, 0, 0]
        self.gc_counts_reported = None
        self.get_count = gc.get_count
        self.gc_callbacks = gc.callbacks  # the list itself: the program may empty it
        self.gc_get_threshold = gc.get_threshold  # platform: a C call returning a tuple

    def _queue_gc_counts(self):
        """Before a write: the collections counted so far, when they changed (and at exit)."""
        # gc.isenabled() too: a program that calls gc.disable() after start is said so in the report.
        counts = tuple(self.gc_counts) + (gc.isenabled(),)
        if counts != self.gc_counts_reported or (self.exit_deadline and not self.final_said):
            self.gc_counts_reported = counts
            fields = {"by_gen": {"0": counts[0], "1": counts[1], "2": counts[2]}, "enabled": counts[3]}
            if self.exit_deadline:
                # The exit flush ran: a process without this record lost what it had queued.
                fields["final"] = self.final_said = True
            self._queue(self.ev.GC_COUNTS, fields)

    def _gc_flush_ok(self):
        """Whether a GC callback may write: nothing else could run Python while it holds the GIL off."""
        return len(self.threads) <= 1 and not self.collecting

    def gc_callback(self, phase, info):
        """gc.callbacks hook: note which collection runs on this thread; constant work."""
        try:
            ident = self.ident()
            if phase == "start":
                self.cid += 1
                gen = info["generation"]
                # The frame that set the collection off; its site is formatted only if this
                # collection is written out (most generation-0 ones are only counted), which
                # happens during the collection, while the frame is still running. The counts
                # are the ones that set it off (the collector resets them after this callback).
                state = [self.cid, gen, self.now(), self.getframe(1), False, self.get_count()]
                self.collecting[ident] = state
                if gen > 0:
                    self._emit_gc_start(state)
            else:
                state = self.collecting.pop(ident, None)
                if state is None:
                    return  # began before we were attached
                gen = state[1]
                self.gc_counts[gen] += 1
                if state[4]:
                    self._queue(self.ev.GC_STOP, {"gen": gen, "cid": state[0], "collected": info.get("collected", 0),
                                                  "uncollectable": info.get("uncollectable", 0)})
                if (self.queue and self.now() - self.last_flush >= self.FLUSH_INTERVAL_NS
                        and self._gc_flush_ok()):
                    self.flush()
        except Exception:
            pass

    def _emit_gc_start(self, state):
        # Young collections are frequent: one is only written out when it destroyed something
        # we track (then late, with its own start time); the others are only counted.
        state[4] = True
        frame = state[3]
        state[3] = None  # hold no frame past this point
        # Name the program's line, not ours, when our own allocation set it off.
        while frame is not None and frame.f_code.co_filename in self.own_files:
            frame = frame.f_back
        site = "%s:%d" % (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ""
        counts = state[5]
        if len(self.queue) >= self.MAX_QUEUED:
            self.lost += 1
            return
        # The counts that set it off, and the thresholds in effect now -- the program may have
        # called gc.set_threshold() since agent_start -- for the report's why_now (analysis/gcwhy.py).
        threshold = self.gc_get_threshold()
        event = {"k": self.ev.GC_START, "t": state[2], "src": "agent", "pid": self.pid,
                 "tid": self.native_tid(), "gen": state[1], "cid": state[0], "site": site,
                 "thread": self.thread_name(), "counts": [counts[0], counts[1], counts[2]],
                 "thresholds": [threshold[0], threshold[1], threshold[2]]}
        # A library's allocation often sets a collection off: name the program's nearest frame
        # above it too (a bounded walk, only for collections written out; test_engine_chain.py).
        app = frame
        walked = 0
        while app is not None and walked < CHAIN_WALK:
            filename = app.f_code.co_filename
            if not self._is_library(filename) and "-packages" not in filename and not self._library_module(app):
                if app is not frame:
                    event["app_site"] = "%s:%d" % (filename, app.f_lineno)
                break
            app = app.f_back
            walked += 1
        self.queue.append(event)

    def classify(self):
        """Why an object is being destroyed right now: (cause, generation, collection id)."""
        state = self.collecting.get(self.ident())
        if state is not None:
            if not state[4]:
                self._emit_gc_start(state)
            return "gc", state[1], state[0]
        if self.finalizing or self.is_finalizing():
            return "shutdown", None, None
        if self.gc_callback not in self.gc_callbacks:
            # The program removed our hook: a collection would look like a refcount drop.
            return "unknown", None, None
        return "refcount", None, None

    # A destruction's record, written as text at once like the connection path's
    # (tracer/agent/mysqldb.py OPEN_LINE); the %s after "t" is ``_who()``'s bare fragment.
    DESTROY_LINE = '{"k":"%s","t":%d%s,"%s":%d,"cause":"%s","gen":%s,"cid":%s}'

    def _destroyed_callback(self, registry, key, kind, field):
        """A weakref callback: ``registry[key]`` died while still tracked — say why (``kind`` event)."""
        def destroyed(ref, agent=self, registry=registry, key=key, kind=kind, field=field):
            try:
                if agent.stopped or registry.get(key) is not ref:
                    return  # closed (or disposed of) explicitly before, or the address was reused
                del registry[key]
                cause, gen, cid = agent.classify()
                t = agent.now()
                agent._push_text(agent.DESTROY_LINE % (kind, t, agent._who()[1], field, key, cause,
                                                       "null" if gen is None else gen,
                                                       "null" if cid is None else cid), None, t)
            except Exception:
                pass
        return destroyed
