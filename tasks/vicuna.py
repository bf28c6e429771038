"""Vicuna's 80 questions with FastChat's gpt-3.5-turbo answers as references (as in MiniLLM)."""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.errors import ConfigError, DataError
from kdbench.readers import get_field, opt_field, read_jsonl, render_prompt
from kdbench.realdata import LoadInfo, RealTask, Source
from kdbench.schema import Example
from kdbench.task import TASKS


@dataclass
class VicunaSettings:
    # FastChat answer file whose texts become the references (MiniLLM used gpt-3.5-turbo's)
    answer_file: str = "answer_gpt35.jsonl"

    def __post_init__(self) -> None:
        if not self.answer_file or "/" in self.answer_file or "\\" in self.answer_file:
            raise ConfigError(f"task_options.vicuna.answer_file must be a file name, got '{self.answer_file}'")


def _text_of(rec: dict, where: str, kind: str) -> str:
    """`text` (old FastChat eval format) or the first turn (`turns` / `choices[0].turns`, llm_judge)."""
    if "text" in rec:
        return get_field(rec, "text", str, where)
    if kind == "answer" and "choices" in rec:
        choices = get_field(rec, "choices", list, where)
        if not choices or not isinstance(choices[0], dict):
            raise DataError(f"{where}: field 'choices' must be a non-empty list of objects")
        rec, where = choices[0], f"{where}: choices[0]"
    if "turns" in rec:
        turns = get_field(rec, "turns", list, where)
        if not turns or not isinstance(turns[0], str):
            raise DataError(f"{where}: field 'turns' must be a non-empty list of strings")
        return turns[0]
    return get_field(rec, "text", str, where)  # raises, naming the missing field


@TASKS.register("vicuna")
class Vicuna(RealTask):
    """Vicuna 80-question evaluation set (eval only; Rouge-L against gpt-3.5-turbo answers).

    Files looked for under `<root>/vicuna/` (also `Vicuna/`), first match wins:

    1. MiniLLM's processed `minillm/valid.jsonl` or `valid.jsonl` (instruction, category, prompt, output).
    2. FastChat's upstream `question.jsonl` (question_id, text or turns, category) plus the answer
       file `answer_file` (default `answer_gpt35.jsonl`; question_id may be an int or a string)
       next to it, in `answer/`, or both under `table/` as in fastchat/eval/table/. Every question
       needs exactly one answer.

    Hub fallback: `MiniLLM/Vicuna` (`valid.jsonl`).
    Task options (task_options.vicuna): answer_file ("answer_gpt35.jsonl").
    """

    name = "vicuna"
    description = "Vicuna 80 questions, gpt-3.5-turbo answers as references"
    version = 1
    splits = ("test",)
    default_metrics = ("rouge_l", "judge")  # MiniLLM Table 1: Rouge-L and GPT-4 feedback
    no_repeat_ngram_size = 6  # LMOps evaluate.py's --no-repeat-ngram-size default (reference/minillm.md §3.1)
    folders = ("vicuna", "Vicuna")
    Settings = VicunaSettings
    how_to_get = ("put MiniLLM's valid.jsonl (huggingface.co/datasets/MiniLLM/Vicuna) or FastChat's "
                  "fastchat/eval/table/question.jsonl and answer/answer_gpt35.jsonl (github.com/lm-sys/FastChat, "
                  "before the eval package was removed) into <data_dir>/vicuna/.")
    HF_REPO = "MiniLLM/Vicuna"

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        a = self.settings.answer_file
        return [("minillm", ("minillm/valid.jsonl",)), ("minillm", ("valid.jsonl",)),
                ("fastchat", ("question.jsonl", a)), ("fastchat", ("question.jsonl", f"answer/{a}")),
                ("fastchat", ("table/question.jsonl", f"table/answer/{a}"))]

    def hf_source(self, split: str) -> Source:
        return Source("hf", hf=f"{self.HF_REPO} (valid.jsonl)")

    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        info = LoadInfo(src.label())
        if src.kind != "fastchat":
            rows = self.rows_of(split, src, self.HF_REPO, "valid.jsonl")
            return self.processed_examples(split, rows, info), info
        qpath, apath = src.paths
        answers: dict[str, tuple[str, str]] = {}
        for where, rec in read_jsonl(apath):
            qid = str(get_field(rec, "question_id", (int, str), where))
            if qid in answers:
                raise DataError(f"{where}: second answer for question_id {qid} (first at {answers[qid][1]})")
            answers[qid] = (_text_of(rec, where, "answer"), where)
        out: list[Example] = []
        for where, rec in read_jsonl(qpath):
            qid = str(get_field(rec, "question_id", (int, str), where))
            text = _text_of(rec, where, "question")
            if qid not in answers:
                raise DataError(f"{apath}: no answer for question_id {qid} (question at {where})")
            meta = {"question_id": qid, "source": where}
            category = opt_field(rec, "category", str, where)
            if category is not None:
                meta["category"] = category
            out.append(Example(id=f"vicuna-{qid}", instruction=text, input="", prompt=render_prompt(text, ""),
                               references=[answers[qid][0]], meta=meta))
        return out, info
