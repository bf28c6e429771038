"""Merging run folders made on different machines or at different times: `summarize A B --out M`.

Every source's cells are copied into M/cells (their record files only: a train cell's model stays
where it is and the copied result.json points there). A cell present in several sources is one cell:
- the same key in its DONE marker (the hash of its frozen config): identical, the first source's
  copy is used and the others are listed as duplicates;
- different keys: a conflict, a ConfigError naming both folders and the config fields that differ
  (two different experiments must not be averaged into one row);
- finished in one source, failed in another: the finished one is used (it was rerun elsewhere).
M/merged_from.json records the sources and the source of every cell (the report's "runs" column).
M/config.json is the first source's config with its list settings (methods, tasks, students, seeds)
united over the sources, so display order and the default baseline cover every row.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io import atomic_write_json, read_json
from .layout import RunLayout

# config lists that a merge unites (dotted paths); every other setting is the first source's
UNITED = ("methods", "tasks", "students", "train_seeds", "eval.seeds")


def _labels(sources: list[Path]) -> list[str]:
    """Short names for the report: the folder name, numbered when two sources share one."""
    names = [p.resolve().name or str(p) for p in sources]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _key(cell: Path) -> Any:
    """What identifies a cell's experiment: its DONE key, else (no key) its frozen config."""
    if (cell / "DONE").exists():
        done = read_json(cell / "DONE")
        if done.get("key") is not None:
            return done["key"]
    return read_json(cell / "config.json") if (cell / "config.json").exists() else None


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two frozen configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(whole config)"]


def _conflict(rel: str, first: tuple[str, Path], other: tuple[str, Path]) -> ConfigError:
    (la, a), (lb, b) = first, other
    ca = read_json(a / "config.json") if (a / "config.json").exists() else {}
    cb = read_json(b / "config.json") if (b / "config.json").exists() else {}
    fields = _diff(ca, cb)
    what = (f"frozen config differs in {', '.join(fields[:6])}{' ...' if len(fields) > 6 else ''}" if fields
            else f"keys {_key(a)} vs {_key(b)}")
    return ConfigError(f"summarize --out: cell '{rel}' is in two runs with different frozen configs ({what}): "
                       f"{a} (run '{la}') and {b} (run '{lb}'). They are different experiments and cannot be "
                       "merged into one row; merge runs that used the same settings for shared cells, or "
                       "leave one of them out")


def _united(configs: list[dict]) -> dict:
    out = copy.deepcopy(configs[0]) if configs else {}
    for dotted in UNITED:
        *parents, leaf = dotted.split(".")
        values: list = []
        for c in configs:
            node: Any = c
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            found = node.get(leaf) if isinstance(node, dict) else None
            for v in found if isinstance(found, list) else []:
                if v not in values:
                    values.append(v)
        if not values:
            continue
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = values
    return out


def _check_out(out: Path, sources: list[Path]) -> None:
    for s in sources:
        if not (s / "cells").is_dir():
            raise ConfigError(f"summarize: '{s}' has no cells/ folder; pass benchmark output folders")
        if s.resolve() == out.resolve():
            raise ConfigError(f"summarize --out: '{out}' is also a source; write the merge to a new folder")
    layout = RunLayout(out)
    if layout.cells.exists() and not layout.merge_record.exists():
        raise ConfigError(f"summarize --out: '{out}' holds a benchmark run's cells (no {layout.merge_record.name}); "
                          "choose a new folder or an earlier merge output")


def merge_runs(sources: list[Path | str], out: Path | str) -> dict:
    """Copy the cells of `sources` into `out` (see the module doc); returns the merge record."""
    sources, out = [Path(s) for s in sources], Path(out)
    if not sources:
        raise ConfigError("summarize: name at least one run folder to merge")
    _check_out(out, sources)
    labels = _labels(sources)
    chosen: dict[str, tuple[str, Path]] = {}  # relative cell path -> (source label, cell folder)
    duplicates: dict[str, list[str]] = {}
    for label, src in zip(labels, sources):
        layout = RunLayout(src)
        cells = list(layout.cell_folders()) + [p.parent for p in layout.tuning_files()]
        for cell in cells:
            rel = cell.relative_to(src).as_posix()
            if rel not in chosen:
                chosen[rel] = (label, cell)
                continue
            first = chosen[rel][1]
            done_a, done_b = (first / "DONE").exists(), (cell / "DONE").exists()
            if done_a and done_b and _key(first) != _key(cell):
                raise _conflict(rel, chosen[rel], (label, cell))
            if (first / "tuning.json").exists() and (cell / "tuning.json").exists() and \
                    read_json(first / "tuning.json") != read_json(cell / "tuning.json"):
                raise _conflict(rel, chosen[rel], (label, cell))
            if done_b and not done_a:  # finished here, failed in the earlier source
                chosen[rel] = (label, cell)
            duplicates.setdefault(rel, []).append(label)

    layout = RunLayout(out)
    if layout.cells.exists():  # an earlier merge output: rebuilt from the sources
        shutil.rmtree(layout.cells)
    for rel, (_, cell) in sorted(chosen.items()):
        dest = out / rel
        dest.mkdir(parents=True, exist_ok=True)
        for f in RunLayout(cell).cell_files(cell):
            if f.name == "result.json":
                res = read_json(f)
                local = cell / "model"
                mp = Path(str(res.get("model_path") or ""))
                if local.is_dir():  # the model stays in its source run; point there, absolutely
                    res["model_path"] = str(local.resolve())
                elif res.get("model_path") and not mp.is_absolute() and mp.exists():
                    res["model_path"] = str(mp.resolve())  # a relative stage path, valid from here only
                atomic_write_json(dest / f.name, res)
            else:
                shutil.copy2(f, dest / f.name)

    configs = [read_json(RunLayout(s).config) if RunLayout(s).config.exists() else {} for s in sources]
    infos = [read_json(RunLayout(s).run_info) if RunLayout(s).run_info.exists() else {} for s in sources]
    record = {"sources": [{"label": lb, "path": str(s.resolve()), "config": c} for lb, s, c in
                          zip(labels, sources, configs)],
              "cells": {rel: lb for rel, (lb, _) in sorted(chosen.items())},
              "duplicates": duplicates}
    atomic_write_json(layout.config, _united(configs))
    walls = [i.get("wall_time_s") for i in infos if i.get("wall_time_s") is not None]
    atomic_write_json(layout.run_info, {"merged": labels, "wall_time_s": round(sum(walls), 2) if walls else None,
                                        "failures": [f for i in infos for f in i.get("failures", [])]})
    atomic_write_json(layout.merge_record, record)
    return record
