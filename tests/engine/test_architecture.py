"""The architecture's promises, checked on the source: small modules, and no import cycles.

Imports are read from the source (ast), including imports inside functions: a lazy import hides a
cycle from Python, not from a reader, so it counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kdbench", "methods", "tasks")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports (resolving relative imports and `from pkg import module`)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import kdbench.metrics.toy` -> the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(m, p, known) for m, p in mods.items()}
    # A package's __init__ is not a dependency of its own submodules' siblings: importing
    # kdbench.metrics.toy runs kdbench/metrics/__init__ too, but that is Python's doing, not a design edge.
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among the project's modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(ROOT)): n for p in _modules().values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def _machine_paths() -> set[str]:
    """This machine's own absolute folders (the checkout's parent, the home folder): read off the
    machine, so the check names no path itself and works wherever the repository is cloned. The
    system temp folder and the root are shared scratch space, not a machine's layout (`--out /tmp/kd`
    in an example is fine), so a clone directly inside them checks only the home folder."""
    import tempfile

    shared = {"/", str(Path(tempfile.gettempdir()).resolve())}
    return {str(p).rstrip("/") + "/" for p in (ROOT.parent.resolve(), Path.home().resolve()) if str(p) not in shared}


def test_no_absolute_machine_paths_in_the_repository():
    needles = _machine_paths()
    hits = []
    for p in sorted(ROOT.rglob("*")):
        if not p.is_file() or any(part in (".git", ".venv", "results", "__pycache__", "build", "dist")
                                  or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts):
            continue
        if p.suffix not in (".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".txt", ".cfg", ".json") and p.name != "run":
            continue
        text = p.read_text(encoding="utf-8", errors="ignore")
        hits += [f"{p.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not hits, f"absolute machine paths: {hits}"
