"""The method side of the interface: the base class a KD method subclasses, its config base and
checks, and the registry it is registered in (kdbench/method.py re-exports all of it, with the context)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .config import from_dict
from .errors import ConfigError
from .registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


def check_range(key: str, value: float, lo: float, hi: float, method: str = "") -> None:
    if not (lo <= value <= hi):
        where = f"method_config.{method}.{key}" if method else key
        raise ConfigError(f"config key '{where}': must be in [{lo}, {hi}], got {value}")


def check_choice(key: str, value: str, choices: Sequence[str], method: str = "") -> None:
    if value not in choices:
        where = f"method_config.{method}.{key}" if method else key
        raise ConfigError(f"config key '{where}': '{value}' is not one of {', '.join(choices)}")


# Where a token-level method gets its training sequences (MethodContext.policy_batches)
DATA_SOURCES = ("student", "gold", "teacher")


@dataclass
class MethodConfig:
    """Base for method configs (dataclasses with paper defaults, validated in __post_init__)."""


class Method:
    name: ClassVar[str] = ""  # stamped by the registry: the name the method is registered under
    description: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    requires_teacher: ClassVar[bool] = False
    # Student initialisation: "base" (the pretrained student) or "sft" (the cached SFT student,
    # as MiniLLM starts from).
    student_init: ClassVar[str] = "base"
    # Budget class: presets give each class its own TrainConfig overrides (config key budget_train),
    # so a new on-policy method gets the on-policy budget without editing a preset. "offline" methods
    # train on fixed data; "on_policy" ones sample a rollout every step (a decode loop per step).
    budget: ClassVar[str] = "offline"
    # True when the method's student IS a cached stage (sft: the SFT student that MiniLLM also starts
    # from), so its cell records the stage instead of training again.
    shared_stage: ClassVar[bool] = False
    # True when the method trains on the pretraining corpus (config pt_corpus; MiniLLM's L_PT), so
    # the corpus is part of its train cell's key
    uses_pretrain_corpus: ClassVar[bool] = False
    # True when the method distils across tokenizers (the teacher's tokenizer is ctx.teacher_tokenizer);
    # the runner refuses a student whose tokenizer differs from the teacher's for every other method.
    cross_tokenizer: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def make_config(cls, overrides: dict | None, name: str):
        return from_dict(cls.Config, overrides or {}, where=f"method_config.{name}")

    def reads_teacher_cache(self) -> bool:
        """True when the method's teacher terms may come from the top-k teacher cache (train.teacher_cache
        topk). The cache spreads the tail mass evenly over the ids outside the top k: forward KL at
        temperature 1 weights the tail by the teacher's own small mass and barely moves (0.12 % gradient
        error at k = 256 on SmolLM2), but reverse KL, JS, alpha-beta or TAID weight it by the student,
        and a temperature > 1 inflates the flat tail; they get the live teacher
        (docs/teacher_cache.md). Off by default: a method opts in."""
        return False

    def train(self, ctx) -> None:  # ctx: kdbench.method.MethodContext (not imported: no cycle)
        raise NotImplementedError


def make_method(name: str, overrides: dict | None = None) -> Method:
    cls = METHODS.get(name, "--methods")
    return cls(cls.make_config(overrides, name))
