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
        first = list(getattr(pkg, "LOAD_ORDER", []))  # a package may fix its display order
        names = sorted(i.name for i in pkgutil.iter_modules(pkg.__path__) if not i.name.startswith("_"))
        for name in first + [n for n in names if n not in first]:
            importlib.import_module(f"{pkg.__name__}.{name}")
    _loaded = True
