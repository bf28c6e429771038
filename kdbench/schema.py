"""The one example schema every task adapter produces and everything downstream consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One instruction-following example.

    `prompt` is the fully rendered model input (template applied); `references` holds every
    acceptable response (Rouge-L takes the max over them; the first is used as the training
    target). `meta` carries task-specific facts (toy family, label words, gold label, ...).
    """

    id: str
    instruction: str
    input: str
    prompt: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.references, list) or not all(isinstance(r, str) for r in self.references):
            raise TypeError(f"Example {self.id}: references must be a list of str, got {self.references!r}")

    @property
    def target(self) -> str:
        """The training target: `meta['target']` when a task sets one (multi-answer prompts draw it
        from their answer distribution), else the first reference."""
        return self.meta.get("target") or (self.references[0] if self.references else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instruction": self.instruction,
            "input": self.input,
            "prompt": self.prompt,
            "references": list(self.references),
            "meta": dict(self.meta),
        }
