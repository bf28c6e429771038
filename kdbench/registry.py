"""A small generic registry with did-you-mean errors.

Methods, tasks, metrics, model presets and benchmark presets each live in one `Registry`.
Entries register themselves at import time with the `register` decorator, so adding a method or
task is one new file and no edit elsewhere.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


def suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, description or _first_doc_line(obj))
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj
        self._descriptions[name] = description
        if isinstance(obj, type) and "name" in _annotations(obj):
            obj.name = name  # a registered class knows its own name (set on the class itself, not inherited)

    def get(self, name: str, where: str = "") -> T:
        if name not in self._items:
            valid = self.names()
            loc = f" (in {where})" if where else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{loc}. Valid {self.kind}s: {', '.join(valid)}."
                + suggest(name, valid)
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_registration_order(self) -> list[str]:
        """Names in the order they registered (import order): the display order of reports."""
        return list(self._items)

    def describe(self, name: str) -> str:
        return self._descriptions.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _annotations(cls: type) -> dict:
    out: dict = {}
    for c in reversed(cls.__mro__):
        out.update(getattr(c, "__annotations__", {}))
    return out


def _first_doc_line(obj: object) -> str:
    doc = getattr(obj, "description", None) or getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def parse_names(spec: str, registry: Registry, where: str, default: list[str] | None = None) -> list[str]:
    """Parse 'a,b' or 'all' into validated registry names (fails before any work)."""
    if spec is None or spec == "":
        return list(default or [])
    if spec.strip() == "all":
        return registry.names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        registry.get(n, where)
    return names
