"""The built-in toy world as a task (see kdbench/toyworld.py for the world itself)."""
from __future__ import annotations

from kdbench.config import from_dict
from kdbench.schema import Example
from kdbench.task import TASKS, Task, TaskOptions
from kdbench.toyworld import ToyWorld, ToyWorldConfig


@TASKS.register("toy")
class ToyTask(Task):
    description = "built-in procedurally generated instruction world with an exact checker (offline)"
    # 2: world v2 (issue 14): yes/no share of dev/test, yes/no on every attribute, "unlabeled" split
    version = 2
    # "unlabeled": prompts without gold responses (meta['gold_hidden']); never train on their
    # references, which are kept only so that teacher labels can be checked
    splits = ("train", "dev", "test", "unlabeled")
    primary_metric = "validity"  # exact, so dev selection, tuning and the claims judge the toy world by it
    default_metrics = ("rouge_l", "judge", "validity", "exact_match", "mode_coverage", "ece", "dist4",
                       "exposure_bias", "lm_loss")

    def __init__(self, options: TaskOptions | None = None, world: dict | None = None):
        super().__init__(options)
        extra = dict(getattr(self.options, "extra", None) or {})
        if world:
            extra.update(world)
        self.world_config = from_dict(ToyWorldConfig, extra, where="task_options.toy")
        self.world = ToyWorld(self.world_config)

    def load_split(self, split: str) -> list[Example]:
        out = []
        for d in self.world.split(split):
            meta = dict(d["meta"])
            meta["target"] = d["target"]
            out.append(Example(id=d["id"], instruction=d["instruction"], input=d["input"], prompt=d["prompt"],
                               references=d["references"], meta=meta))
        return out

    def pretrain_texts(self) -> list[str]:
        return self.world.pretrain_texts()

    def vocabulary(self) -> list[str]:
        return self.world.vocabulary()

    def check(self, example: Example, response: str) -> dict:
        return self.world.check(example.references, example.meta, response)

    def fingerprint(self) -> dict:
        fp = super().fingerprint()
        fp["world"] = vars(self.world_config)
        return fp
