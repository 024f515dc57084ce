"""The pytest plugin under xdist, in the controller: the workers trace themselves; this merges.

Each worker gets a file in the controller's private directory (``pytest_configure_node``) for
its final word, written after its own exit handlers (tracer/pytest_plugin.py ``at_exit``);
xdist's own ``pytest_sessionfinish`` waits for the workers to exit, and this plugin's wrapper
runs after it: the final words (else what each worker reported at its sessionfinish) make one
summary, the exit status and one capture (docs/pytest-plugin.md).
"""

import collections
import json
import os

import pytest

from trace_quit.tracer.pytest_ledger import command_argv, leak_status, merge_captures, merge_results, write_summary


class Controller:
    """Under xdist: merges the workers' results (and capture parts) into one summary (and file)."""

    def __init__(self, config, capture):
        self.config = config
        self.capture = capture
        self.parts = []
        self.late = []
        self.workers = []
        self.provisional = {}  # worker id -> what it reported at its sessionfinish
        self.other_engines = {}
        self.unfrozen = 0
        self.after_exit = collections.Counter()
        self.finals = None  # a private directory: each worker's final word, written at its exit
        if capture and os.path.lexists(capture):
            raise pytest.UsageError("%s exists: remove it or choose another --trace-quit-capture" % capture)

    def pytest_configure_node(self, node):
        import tempfile

        if self.finals is None:
            self.finals = tempfile.mkdtemp(prefix="trace-quit-pytest-")
        node.workerinput["trace_quit_final"] = os.path.join(self.finals, "%s.json" % node.gateway.id)

    def pytest_testnodedown(self, node, error):
        out = getattr(node, "workeroutput", {}) or {}
        self.workers.append(getattr(getattr(node, "gateway", None), "id", None) or out.get("workerid"))
        data = out.get("trace_quit")
        if data:
            self.provisional[self.workers[-1]] = json.loads(data)

    def _read_finals(self):
        """Each worker's final word (written at its exit, after its exit handlers), else what it
        reported at its sessionfinish."""
        import shutil

        for worker, data in sorted(self.provisional.items(), key=str):
            try:
                with open(os.path.join(self.finals or "", "%s.json" % worker)) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                pass
            self.parts.append(data["results"])
            self.late.extend(tuple(x) for x in data["late"])
            for dialect, n in (data.get("other_engines") or {}).items():
                self.other_engines[dialect] = self.other_engines.get(dialect, 0) + n
            self.unfrozen += data.get("unfrozen") or 0
            self.after_exit.update(data.get("after_exit") or {})
        if self.finals is not None:
            shutil.rmtree(self.finals, ignore_errors=True)

    @property
    def results(self):
        return merge_results(self.parts)

    def pytest_report_teststatus(self, report, config):
        return leak_status(report)

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_sessionfinish(self, session):
        yield  # xdist's own (trylast) sessionfinish waits for the workers to exit
        self._read_finals()
        if self.late and session.exitstatus == 0:
            session.exitstatus = 1
        if self.capture:
            from trace_quit.tracer import events as ev

            merge_captures(self.capture, ["%s.%s" % (self.capture, w) for w in self.workers if w],
                           {"argv": ev.redact_argv(command_argv()), "cwd": os.getcwd()}, int(session.exitstatus))

    def pytest_terminal_summary(self, terminalreporter):
        write_summary(terminalreporter, self.results, self.late, self.other_engines, self.unfrozen)
        if self.after_exit:
            terminalreporter.write_line("the workers' exit handlers closed %d connection(s) (%s): counted above" % (
                sum(self.after_exit.values()), ", ".join("%s %d" % kv for kv in sorted(self.after_exit.items()))))
