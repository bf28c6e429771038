"""BoolQ validation (SuperGLUE) as a zero-shot yes/no label-word task for calibration (ECE)."""
from __future__ import annotations

from kdbench.errors import DataError
from kdbench.readers import get_field, opt_field, read_jsonl
from kdbench.realdata import LabelWordTask, LoadInfo, Source
from kdbench.schema import Example
from kdbench.task import TASKS


def parse_label(value, where: str, key: str) -> int:
    """BoolQ gold answer as 0/1: JSON boolean (SuperGLUE, google), "true"/"false" strings (some copies), or 0/1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    if isinstance(value, int) and value in (0, 1):
        return value
    raise DataError(f"{where}: field '{key}' must be a boolean, \"true\"/\"false\" or 0/1, got {value!r}")


@TASKS.register("boolq")
class BoolQ(LabelWordTask):
    """BoolQ yes/no questions, zero-shot with label words "no" (0) / "yes" (1); metric ECE.

    Files looked for under `<root>/boolq/` (also `BoolQ/`), first match wins:
    `val.jsonl` (SuperGLUE: question, passage, idx, label) or `dev.jsonl` (google's original:
    question, passage, title, answer). The label may be a JSON boolean, the strings "true"/"false",
    or 0/1. Google's file has the title separately; it is prefixed as "<title> -- <passage>", the
    form SuperGLUE's passages have, so both files give the same prompts.

    Each example: input = "Passage: ...\\nQuestion: ...?", reference = the gold label word,
    meta = {label_words, label}. BoolQ passages are long; the runner's prompt-length filter
    drops (and counts) those over the limit.
    Hub fallback: `aps/super_glue`, config `boolq`, split `validation`. No task options.
    """

    name = "boolq"
    description = "BoolQ validation, zero-shot yes/no with label words, for calibration (ECE)"
    version = 1
    splits = ("test",)
    folders = ("boolq", "BoolQ")
    label_words = ("no", "yes")
    instruction = "Read the passage and answer the question with yes or no."
    how_to_get = ("put SuperGLUE's BoolQ/val.jsonl (super.gluebenchmark.com) or google's dev.jsonl "
                  "(github.com/google-research-datasets/boolean-questions) into <data_dir>/boolq/.")
    HF = ("aps/super_glue", "boolq", "validation")

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("superglue", ("val.jsonl",)), ("google", ("dev.jsonl",))]

    def hf_source(self, split: str) -> Source:
        return Source("hf", hf=f"{self.HF[0]} ({self.HF[1]}, {self.HF[2]})")

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        info = LoadInfo(src.label())
        if src.kind == "hf":
            rows = self.load_hf_rows(split, src, self.HF[0], name=self.HF[1], split=self.HF[2])
        else:
            rows = read_jsonl(src.paths[0])
        out: list[Example] = []
        for i, (where, rec) in enumerate(rows):
            question = get_field(rec, "question", str, where).strip()
            passage = get_field(rec, "passage", str, where).strip()
            title = opt_field(rec, "title", str, where)
            if title and not passage.startswith(f"{title} -- "):
                passage = f"{title} -- {passage}"
            key = "label" if "label" in rec else "answer"
            label = parse_label(get_field(rec, key, (bool, str, int), where), where, key)
            if not question.endswith("?"):
                question += "?"  # BoolQ questions are stored without the question mark
            idx = opt_field(rec, "idx", int, where, i)
            out.append(self.make_example(f"boolq-{idx}", f"Passage: {passage}\nQuestion: {question}", label,
                                         {"source": where}))
        return out, info
