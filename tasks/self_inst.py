"""Self-Instruct's 252 user-oriented instructions (MiniLLM's processed copy has 242)."""
from __future__ import annotations

from kdbench.readers import get_field, instances_of, opt_field, read_jsonl, render_prompt
from kdbench.realdata import LoadInfo, RealTask, Source
from kdbench.schema import Example
from kdbench.task import TASKS


@TASKS.register("self_inst")
class SelfInst(RealTask):
    """Self-Instruct user-oriented evaluation set (eval only; Rouge-L).

    Files looked for under `<root>/self_inst/` (also `self-inst/`, `self-instruct/`), first match wins:

    1. MiniLLM's processed `minillm/valid.jsonl` or `valid.jsonl` (242 records: instruction, input,
       output, prompt, topic). It wins over the upstream file when both exist, because it is the
       set MiniLLM's numbers were measured on.
    2. upstream `user_oriented_instructions.jsonl` (or `human_eval/...`): 252 records with `id`,
       `motivation_app`, `instruction` and `instances` (a list of {input, output}); one example per
       instance, meta.topic = motivation_app as in MiniLLM's copy.

    Hub fallback: `MiniLLM/self-inst` (`valid.jsonl`). No task options.
    """

    name = "self_inst"
    description = "Self-Instruct user-oriented instructions (242 in MiniLLM's copy, 252 upstream)"
    version = 1
    splits = ("test",)
    # MiniLLM's metrics on Self-Instruct: Rouge-L and GPT-4 feedback (Table 1),
    # Dist-4 and LM loss (reference/minillm.md §3.4)
    default_metrics = ("rouge_l", "judge", "dist4", "lm_loss")
    no_repeat_ngram_size = 6  # LMOps evaluate.py's --no-repeat-ngram-size default (reference/minillm.md §3.1)
    folders = ("self_inst", "self-inst", "self-instruct")
    how_to_get = ("put MiniLLM's valid.jsonl (huggingface.co/datasets/MiniLLM/self-inst) or the upstream "
                  "human_eval/user_oriented_instructions.jsonl (github.com/yizhongw/self-instruct) into "
                  "<data_dir>/self_inst/.")
    HF_REPO = "MiniLLM/self-inst"

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("minillm", ("minillm/valid.jsonl",)), ("minillm", ("valid.jsonl",)),
                ("upstream", ("user_oriented_instructions.jsonl",)),
                ("upstream", ("human_eval/user_oriented_instructions.jsonl",))]

    def hf_source(self, split: str) -> Source:
        return Source("hf", hf=f"{self.HF_REPO} (valid.jsonl)")

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        info = LoadInfo(src.label())
        if src.kind != "upstream":
            rows = self.rows_of(split, src, self.HF_REPO, "valid.jsonl")
            return self.processed_examples(split, rows, info), info
        out: list[Example] = []
        for i, (where, rec) in enumerate(read_jsonl(src.paths[0])):
            rid = opt_field(rec, "id", str, where, f"{i:05d}")
            instruction = get_field(rec, "instruction", str, where)
            app = opt_field(rec, "motivation_app", str, where)
            instances = instances_of(rec, where)
            for k, w, inst in instances:
                inp = get_field(inst, "input", str, w)
                output = get_field(inst, "output", str, w)
                meta = {"source": where}
                if app is not None:
                    meta["topic"] = app
                suffix = f"-{k}" if len(instances) > 1 else ""
                out.append(Example(id=f"self_inst-{rid}{suffix}", instruction=instruction, input=inp,
                                   prompt=render_prompt(instruction, inp), references=[output], meta=meta))
        return out, info
