"""Unnatural Instructions (UnNI) core set, bucketed by response length as in MiniLLM."""
from __future__ import annotations

import random
from dataclasses import dataclass

from kdbench.errors import ConfigError
from kdbench.readers import get_field, get_references, in_bucket, instances_of, opt_field, read_jsonl, render_prompt
from kdbench.realdata import BucketSettings, BucketedTask, LoadInfo, Source
from kdbench.schema import Example
from kdbench.task import TASKS


@dataclass
class UnNISettings(BucketSettings):
    # MiniLLM evaluates 10,000 examples (--dev-num 10000); None keeps all
    num_examples: int | None = 10000
    # seed of the random subset drawn from the upstream core set (fixed so every run sees the same set)
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_examples is not None and self.num_examples < 1:
            raise ConfigError(f"task_options.unni.num_examples must be >= 1 or null, got {self.num_examples}")


@TASKS.register("unni")
class UnNI(BucketedTask):
    """Unnatural Instructions (eval only; Rouge-L, max over every reference).

    Files looked for under `<root>/uinst/` (also `unni/`, `unnatural-instructions/`), first match wins:

    1. MiniLLM's processed bucket file `minillm/<bucket>/valid.jsonl` or `<bucket>/valid.jsonl`
       (instruction, input, output as a string or a list, prompt), used as it is; the first
       `num_examples` records are kept, as MiniLLM's --dev-num does.
    2. a flat processed `minillm/valid.jsonl` or `valid.jsonl`, bucketed here by words, first
       `num_examples`.
    3. upstream orhonovich/unnatural-instructions `core_data.jsonl` (or `data/core_data.jsonl`,
       unzipped): {instruction, instances: [{input, output, constraints, ...}]}; one example per
       instance, the instruction used as is (the `constraints` text goes to meta), bucketed by
       words, then a random subset of `num_examples` drawn with `sample_seed` (kept in file order).
       MiniLLM's own 10k subset cannot be rebuilt from the core file; use its processed file for
       comparable numbers.

    Hub fallback: `MiniLLM/uinst` (`<bucket>/valid.jsonl`; the hub has 0_2, 3_5, 6_10, 11_).
    The shared data folder's `uinst/minillm_short_response_subset/` is a 1-2 word response set
    and is deliberately not picked up.
    Task options (task_options.unni): length_bucket ("11_"), num_examples (10000), sample_seed (0).
    """

    name = "unni"
    description = "Unnatural Instructions core set, response-length bucket 11_ by default"
    version = 1
    splits = ("test",)
    default_metrics = ("rouge_l",)  # MiniLLM Table 1: Rouge-L only on S-NI and UnNI
    no_repeat_ngram_size = 6  # LMOps evaluate.py's --no-repeat-ngram-size default (reference/minillm.md §3.1)
    folders = ("uinst", "unni", "unnatural-instructions")
    Settings = UnNISettings
    hf_repo = "MiniLLM/uinst"
    how_to_get = ("put MiniLLM's <bucket>/valid.jsonl (huggingface.co/datasets/MiniLLM/uinst) into <data_dir>/uinst/, "
                  "or the unzipped core_data.jsonl from github.com/orhonovich/unnatural-instructions "
                  "(data/core_data.zip).")

    def upstream_layouts(self) -> list[tuple[str, tuple[str, ...]]]:
        return [("upstream", ("core_data.jsonl",)), ("upstream", ("data/core_data.jsonl",))]

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        n = self.settings.num_examples
        if src.kind != "upstream":
            exs, info = self.read_processed(split, src)
            if n is not None and len(exs) > n:
                info.dropped["over_num_examples"] += len(exs) - n
                exs = exs[:n]
            return exs, info
        info = LoadInfo(src.label(), notes={"length_bucket": f"{self.settings.length_bucket} "
                                                              "(whitespace words of the first reference)"})
        bucket = self.bucket
        out: list[Example] = []
        for i, (where, rec) in enumerate(read_jsonl(src.paths[0])):
            instruction = get_field(rec, "instruction", str, where)
            for k, w, inst in instances_of(rec, where):
                inp = get_field(inst, "input", str, w)
                refs = get_references(inst, "output", w)
                if not in_bucket(refs[0], bucket):
                    info.dropped["outside_length_bucket"] += 1
                    continue
                meta = {"source": w}
                constraints = opt_field(inst, "constraints", str, w)
                if constraints is not None:
                    meta["constraints"] = constraints
                out.append(Example(id=f"unni-{i:06d}-{k}", instruction=instruction, input=inp,
                                   prompt=render_prompt(instruction, inp), references=refs, meta=meta))
        if n is not None and len(out) > n:
            keep = sorted(random.Random(self.settings.sample_seed).sample(range(len(out)), n))
            info.dropped["not_sampled"] += len(out) - n
            info.notes["sampling"] = f"{n} of {len(out)} in-bucket examples, seed {self.settings.sample_seed}"
            out = [out[j] for j in keep]
        return out, info
