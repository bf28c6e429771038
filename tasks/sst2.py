"""SST-2 validation (GLUE dev) as a zero-shot label-word task for calibration (ECE)."""
from __future__ import annotations

from kdbench.errors import DataError
from kdbench.readers import get_field, read_tsv
from kdbench.realdata import LabelWordTask, LoadInfo, Source
from kdbench.schema import Example
from kdbench.task import TASKS

TEXT_COLUMNS = ("sentence", "text", "text_a")  # GLUE's name, then the names seen in copies


@TASKS.register("sst2")
class SST2(LabelWordTask):
    """SST-2 sentiment, zero-shot with label words "negative" (0) / "positive" (1); metric ECE.

    Files looked for under `<root>/sst2/` (also `SST-2/`, `glue_sst2/`): `dev.tsv` — tab-separated
    with a header naming a text column (sentence, text or text_a; any column order) and `label`
    (0 or 1). The text is stripped of surrounding whitespace and otherwise left as GLUE has it
    (tokenised, lower-cased).

    Each example: prompt = template(instruction, sentence), reference = the gold label word,
    meta = {label_words, label}.
    Hub fallback: `nyu-mll/glue`, config `sst2`, split `validation`. No task options.
    """

    name = "sst2"
    description = "SST-2 validation, zero-shot sentiment with label words, for calibration (ECE)"
    version = 1
    splits = ("test",)
    folders = ("sst2", "SST-2", "glue_sst2")
    label_words = ("negative", "positive")
    instruction = ("Classify the sentiment of the following movie review. "
                   "Answer with one word: positive or negative.")
    how_to_get = "put GLUE's SST-2/dev.tsv (gluebenchmark.com) into <data_dir>/sst2/."
    HF = ("nyu-mll/glue", "sst2", "validation")

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        return [("glue", ("dev.tsv",))]

    def hf_source(self, split: str) -> Source:
        return Source("hf", hf=f"{self.HF[0]} ({self.HF[1]}, {self.HF[2]})")

    def _label(self, value, where: str) -> int:
        if isinstance(value, str):
            value = value.strip()
            if value in ("0", "1"):
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return value
        raise DataError(f"{where}: field 'label' must be 0 or 1, got {value!r}")

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        info = LoadInfo(src.label())
        if src.kind == "hf":
            rows = self.load_hf_rows(split, src, self.HF[0], name=self.HF[1], split=self.HF[2])
            records = [(w, get_field(r, "sentence", str, w), r.get("label")) for w, r in rows]
        else:
            path = src.paths[0]
            header, rows = read_tsv(path)
            text_col = next((c for c in TEXT_COLUMNS if c in header), None)
            if text_col is None or "label" not in header:
                raise DataError(f"{path}:1: header must name a text column ({', '.join(TEXT_COLUMNS)}) and 'label', "
                                f"got: {', '.join(header)}")
            ti, li = header.index(text_col), header.index("label")
            records = [(w, cells[ti], cells[li]) for w, cells in rows]
        out: list[Example] = []
        for i, (where, text, label) in enumerate(records):
            text = text.strip()
            if not text:
                raise DataError(f"{where}: the text field is empty")
            out.append(self.make_example(f"sst2-{i:04d}", text, self._label(label, where), {"source": where}))
        return out, info
