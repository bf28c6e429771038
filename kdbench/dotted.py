"""Nested-dict edits of configs: merging presets and applying `--set a.b.c=value`
(re-exported by kdbench.config)."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError


def deep_update(base: dict, override: dict) -> dict:
    """A new dict: `override` merged into `base`; neither input is mutated or aliased."""
    import copy

    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Apply `--set a.b.c=value` to a nested dict (values parsed as YAML scalars)."""
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    cur[keys[-1]] = value
