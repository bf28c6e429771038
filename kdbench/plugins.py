"""Import every module in methods/, tasks/ and kdbench/metrics/ so they register themselves.

This is what makes "a new method is one new file" true: nothing has to list the files.
"""
from __future__ import annotations

import importlib
import pkgutil

_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    import methods
    import tasks

    import kdbench.metrics as metrics_pkg

    for pkg in (metrics_pkg, tasks, methods):
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True
