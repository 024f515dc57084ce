"""The modules the program imports: each hooked library is hooked as it is loaded.

A finder first on ``sys.meta_path`` lets the real finders find a module the agent hooks
(runtime.py ``HOOKS``: mysqlclient, SQLAlchemy, PyMySQL, mysql-connector, aiomysql,
asyncmy; attach.py adds ``more_hooks``), and runs the hook once the module has run; modules
the program had already imported are hooked at once. Each hook says which module it hooked
(``report_module``).
"""

import sys


def hook_imports(agent, hooks):
    """Hook ``hooks``' (and ``agent.more_hooks``') modules: those loaded from now on, and those already loaded."""
    sys.meta_path.insert(0, ImportHook(agent, hooks))
    for table in (hooks, agent.more_hooks):
        for name, hook in list(table.items()):
            if name in sys.modules:
                hook(agent, sys.modules[name])


class ImportHook:
    """A meta path finder that lets the real finders load a module, then hooks it."""

    def __init__(self, agent, hooks):
        self.agent = agent
        self.hooks = hooks  # module name -> hook(agent, module)
        self.busy = set()

    def find_spec(self, name, path=None, target=None):
        if (name not in self.hooks and name not in self.agent.more_hooks) or name in self.busy:
            return None
        self.busy.add(name)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module
        agent = self.agent
        hooks = self.hooks

        def exec_module(module):
            loader_exec(module)
            for hook in (hooks.get(name), agent.more_hooks.get(name)):
                try:
                    if hook is not None:
                        hook(agent, module)
                except Exception:
                    pass

        spec.loader.exec_module = exec_module
        return spec


def report_module(agent, name):
    """Say which ``name`` module (version, file) the program loaded: a ``module`` record."""
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if version is None and name == "MySQLdb":
        version = ".".join(str(p) for p in getattr(module, "version_info", ())[:3])
    agent.emit(agent.ev.MODULE, name=name, version=version, file=getattr(module, "__file__", None))
