"""The data stages of a run: the text stream and pretraining corpus in blocks (MiniLLM's L_PT), and
the teacher's samples on the train prompts and on the prompts without gold (SeqKD data, and the
targets of teacher-guided methods on unlabeled prompts). A mixin of `Stages`, which owns the stage
cache (`stage`), the tokenizer and the teacher model these build on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import corpus
from . import models as M
from .config import stable_hash
from .data import encode_pair, lm_blocks
from .evaluation import sampling_config
from .io import atomic_write_jsonl, read_jsonl
from .sampling import sample
from .schema import Example


def with_dtype(spec: dict, dtype: str) -> dict:
    """A key's spec with --dtype when it is not the default: half precision changes the numbers (mixed
    precision training on GPU, the frozen teacher and evaluated models everywhere), and runs in
    float32 keep the keys they always had."""
    return spec if dtype == "float32" else {**spec, "dtype": dtype}


class DataStages:
    """Data stages; needs the host's cfg, tasks, stage(), tokenizer(), teacher_model(), data_fp() and
    place_teacher()."""

    def pretrain_blocks(self, tokenizer=None) -> torch.Tensor | None:
        texts = self.tasks.get(self.cfg.train_task).pretrain_texts()
        if not texts:
            return None
        return lm_blocks(tokenizer or self.tokenizer(), texts, self.cfg.max_length)

    def _pt_corpus_spec(self) -> dict:
        self.tokenizer()  # sets the tokenizer key
        return {"files": corpus.fingerprint(self.cfg.pt_corpus), "tokenizer": self._tok_key,
                "block": self.cfg.max_length}

    def pt_corpus_key(self) -> str:
        return stable_hash(self._pt_corpus_spec())

    def lpt_blocks(self, tokenizer=None) -> torch.Tensor | None:
        """MiniLLM's L_PT data: the pt_corpus stage when configured, else the train task's stream
        (in `tokenizer`, a student's own, when given)."""
        if not self.cfg.pt_corpus:
            return self.pretrain_blocks(tokenizer)
        if tokenizer is not None and tokenizer is not self.tokenizer():  # a student's own vocabulary: in memory
            return lm_blocks(tokenizer, corpus.read_documents(self.cfg.pt_corpus), self.cfg.max_length)

        def build(folder: Path):
            docs = corpus.read_documents(self.cfg.pt_corpus)
            blocks = lm_blocks(self.tokenizer(), docs, self.cfg.max_length)
            torch.save(blocks, folder / "blocks.pt")
            return {"documents": len(docs), "blocks": int(blocks.shape[0]), "tokens": int(blocks.numel())}

        folder, _ = self.stage("pt-corpus", self._pt_corpus_spec(), build)
        return torch.load(folder / "blocks.pt")

    def _teacher_samples_spec(self, split: str | None = None):
        scfg = sampling_config(self.cfg.eval, self.cfg.max_length - self.cfg.max_prompt_length)
        scfg.no_repeat_ngram_size = 0
        teacher_path, teacher_key = self.teacher_model()
        n_tok = M.vocab_size_of(self.tokenizer())
        if M.embedding_rows(M.load_config(teacher_path)) > n_tok:
            # a padded embedding's extra rows are not tokens: never drawn. Set only for such a teacher, whose
            # samples it changes, so every other teacher's stage keeps its key
            scfg.vocab_size = n_tok
        spec = {"teacher": teacher_key, "data": self.data_fp(), "sampling": dataclasses.asdict(scfg),
                "seed": self.cfg.distill.seed}
        if split is not None:  # the train split's key predates the others: it stays as it was
            spec["split"] = split
        return spec, scfg

    def teacher_samples_key(self) -> str:
        """The key of the teacher-samples stages (train split, and the unlabeled prompts when the run
        uses them) under the current config; nothing is built."""
        keys = [stable_hash(with_dtype(self._teacher_samples_spec()[0], self.cfg.dtype))]
        if self.tasks.unlabeled_examples():
            keys.append(stable_hash(with_dtype(self._teacher_samples_spec("unlabeled")[0], self.cfg.dtype)))
        return "+".join(keys)

    def teacher_samples(self) -> list[Example]:
        """One teacher sample per train prompt (SeqKD data), then one per unlabeled prompt when the run
        uses them (`unlabeled_samples`); generated once per split and cached."""
        return self._teacher_samples(self.tasks.train_examples(), None) + self.unlabeled_samples()

    def unlabeled_samples(self) -> list[Example]:
        """The train task's prompts without gold, each with the teacher's sample as its target."""
        exs = self.tasks.unlabeled_examples()
        return self._teacher_samples(exs, "unlabeled") if exs else []

    def _teacher_samples(self, exs: list[Example], split: str | None) -> list[Example]:
        teacher_path, _ = self.teacher_model()
        spec, scfg = self._teacher_samples_spec(split)
        seed = spec["seed"]
        c_max = self.cfg.max_length

        def build(folder: Path):
            tok = self.tokenizer()
            model = M.load_model(teacher_path, self.cfg.dtype)  # frozen: loaded in --dtype
            self.place_teacher(model)
            prompts = [encode_pair(tok, ex.prompt, None, c_max, self.cfg.max_prompt_length)[0] for ex in exs]
            r = sample(model, prompts, scfg, tok.eos_token_id, tok.pad_token_id, seed, batch_size=64)
            atomic_write_jsonl(folder / "samples.jsonl",
                               [{"id": ex.id, "response": t} for ex, t in zip(exs, r.texts(tok))])
            return {"n": len(exs), "generated_tokens": r.n_generated}

        folder, _ = self.stage("teacher-samples" if split is None else f"teacher-samples-{split}", spec, build)
        by_id = {row["id"]: row["response"] for row in read_jsonl(folder / "samples.jsonl")}
        out = []
        for ex in exs:
            meta = dict(ex.meta)
            meta["target"] = by_id[ex.id]
            out.append(dataclasses.replace(ex, meta=meta))
        return out

    def teacher_cache_stage(self, spec: dict, build) -> tuple[Path, str]:
        """The teacher-cache stage of one example set (kdbench/teacher_store.py): the reader's spec (set
        content, k, vocabulary, lengths) plus the teacher and tokenizer it was computed with, so a changed
        teacher rebuilds it; every method and training seed with the same inputs reads the same stage."""
        self.tokenizer()  # sets the tokenizer key
        full = {**spec, "teacher": self.teacher_model()[1], "tokenizer": self._tok_key}
        return self.stage("teacher-topk", full, build)

    def unlabeled_spec(self) -> dict | None:
        """What the unlabeled prompts add to a teacher-guided train cell's key (None: nothing, so the
        keys of runs without them stay as they were)."""
        exs = self.tasks.unlabeled_examples()
        return {"split": "unlabeled", "n": len(exs)} if exs else None
