"""Cached stages: everything a run keeps under its stage cache, built once and shared.

    tokenizer -> teacher-base (build + pretrain) -> teacher-sft
    student-base (build + pretrain, or pruned from the teacher) -> student-sft (per training seed)
    teacher-samples, teacher-samples-unlabeled, pt-corpus (kdbench/stage_data.py)

A stage's folder is named by a hash of everything that determines it (its spec), built in a
`.partial` folder that an interrupted build resumes from, and renamed into place when complete.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from . import adapters, ranks, tracking
from . import models as M
from . import vocab
from .config import BenchConfig, TrainConfig, stable_hash, train_key
from .data import infinite_batches, lm_batch
from .errors import ConfigError
from .io import atomic_write_json, is_done, mark_done
from .layout import RunLayout, label_of
from .method import METHODS, MethodContext, cross_entropy, make_method
from .resources import peak_note
from .stage_data import DataStages, with_dtype  # noqa: F401 (with_dtype: re-exported for cells)
from .taskset import TaskSet
from .trainer import LossOutput, Trainer, get_accelerator

log = logging.getLogger("kdbench")



def methods_needing_one_vocab(cfg: BenchConfig) -> list[str]:
    """The run's methods that distil from the teacher but cannot do so across tokenizers."""
    return [m for m in cfg.methods if METHODS.get(m).requires_teacher and not METHODS.get(m).cross_tokenizer]


def cross_tokenizer_methods() -> list[str]:
    return [m for m in METHODS.names() if METHODS.get(m).cross_tokenizer]


class Stages(DataStages):
    def __init__(self, cfg: BenchConfig, layout: RunLayout, tasks: TaskSet, progress: bool = True):
        self.cfg = cfg
        self.layout = layout
        self.tasks = tasks
        self.progress = progress
        self._tokenizer = None
        self._tok_key = ""
        # memos: stage name -> (path, key); student -> (tokenizer, key). Rank 0 building a stage
        # alone (ranks.solo) keeps its own: a stage found in a memo skips the collective of
        # stage(), so the memo all ranks use may only hold what all ranks asked for.
        self._memos: dict[bool, tuple[dict, dict]] = {False: ({}, {}), True: ({}, {})}

    @property
    def _models(self) -> dict[str, tuple[str, str]]:
        return self._memos[ranks.world() < ranks.launched_world()][0]

    @property
    def _student_toks(self) -> dict[str, tuple]:
        return self._memos[ranks.world() < ranks.launched_world()][1]

    def stage(self, kind: str, spec: dict, build: Callable[[Path], dict | None]) -> tuple[Path, str]:
        """The stage's folder and key, built first when not cached. Under several ranks rank 0 builds
        it alone, exactly as one process (training included), while the others wait; then all read it."""
        spec = with_dtype(spec, self.cfg.dtype)
        key = stable_hash(spec)
        folder = self.layout.stage(kind, key)
        ranks.on_main(lambda: self._build(kind, spec, key, folder, build), f"stage {kind}")
        return folder, key

    def _build(self, kind: str, spec: dict, key: str, folder: Path, build: Callable[[Path], dict | None]) -> None:
        if is_done(folder):
            log.info("stage %s: cached (%s)", kind, folder)
            return
        if folder.exists():
            shutil.rmtree(folder)  # no DONE marker: never trust partial output
        tmp = self.layout.stage_partial(kind, key)
        if is_done(tmp):  # finished, but interrupted before the rename: don't rebuild
            tmp.rename(folder)
            log.info("stage %s: cached (%s)", kind, folder)
            return
        tmp.mkdir(parents=True, exist_ok=True)
        atomic_write_json(tmp / "stage.json", {"kind": kind, "key": key, "spec": spec})
        t0 = time.time()
        log.info("stage %s: building (%s)", kind, folder.name)
        info = build(tmp) or {}
        info["wall_time_s"] = round(time.time() - t0, 2)
        mark_done(tmp, info)
        tmp.rename(folder)
        log.info("stage %s: done in %.1fs%s", kind, info["wall_time_s"], peak_note())

    def data_fp(self) -> dict:
        c = self.cfg
        return {"train_task": self.tasks.get(c.train_task).fingerprint(), "max_length": c.max_length,
                "max_prompt_length": c.max_prompt_length}

    # ------------------------------------------------------------------------------------------
    # tokenizer

    def tokenizer(self):
        if self._tokenizer is not None:
            return self._tokenizer
        c = self.cfg
        if not M.is_preset(c.teacher):
            # Real teacher: its tokenizer is the vocabulary everyone shares.
            self._tokenizer = M.load_tokenizer(c.teacher)
            self._tok_key = stable_hash({"teacher_tokenizer": c.teacher})
            if methods_needing_one_vocab(c):  # else students may bring their own (student_tokenizer)
                for s in c.students:
                    if not M.is_preset(s) and not M.is_derived(s):  # pruned students use the teacher's own
                        M.check_same_vocab(self._tokenizer, M.load_tokenizer(s))
            return self._tokenizer
        for s in c.students:
            if not M.is_preset(s) and not M.is_derived(s):
                raise ConfigError(f"--student '{s}' is a real model but --teacher '{c.teacher}' is a built-in "
                                  "preset with its own tokenizer; use a real teacher of the same family")
        tasks = [self.tasks.get(t) for t in self.tasks.all_names()]

        def build(folder: Path):
            tok = vocab.build(c, tasks)
            tok.save_pretrained(folder)
            return {"vocab_size": len(tok)}

        folder, self._tok_key = self.stage("tokenizer", vocab.recipe(c, tasks), build)
        self._tokenizer = M.load_tokenizer(str(folder))
        return self._tokenizer

    def student_tokenizer(self, student: str) -> tuple:
        """(tokenizer, key) a student trains and is evaluated with: the shared one, unless the student
        brings its own (a real model of another vocabulary, or build.student_tokenizer for presets).
        Only cross-tokenizer methods may then distil into it (the runner checks up front)."""
        if student in self._student_toks:
            return self._student_toks[student]
        c = self.cfg
        shared = (self.tokenizer(), self._tok_key)
        out = shared
        if M.is_derived(student):
            pass
        elif not M.is_preset(student):
            tok = M.load_tokenizer(student)
            if M.real_vocab(tok) != M.real_vocab(shared[0]):
                out = (tok, stable_hash({"student_tokenizer": student}))
        else:
            tasks = [self.tasks.get(t) for t in self.tasks.all_names()]
            rec = vocab.student_recipe(c, tasks)
            if rec is not None:
                def build(folder: Path):
                    tok = vocab.build_student(c, tasks)
                    tok.save_pretrained(folder)
                    return {"vocab_size": len(tok)}

                folder, key = self.stage("student-tokenizer", rec, build)
                out = (M.load_tokenizer(str(folder)), key)
        self._student_toks[student] = out
        return out

    def cross_tokenizer(self, student: str) -> bool:
        return self.student_tokenizer(student)[0] is not self.tokenizer()

    def tokenizer_for_group(self, group: str):
        """The tokenizer of a leaderboard group's models (a student's own, or the shared one)."""
        for s in self.cfg.students:
            if label_of(s) == group:
                return self.student_tokenizer(s)[0]
        return self.tokenizer()

    # ------------------------------------------------------------------------------------------
    # models

    def _base_model(self, role: str, name: str, pretrain: TrainConfig) -> tuple[str, str]:
        """A base model: a preset built and pretrained on the task's text, or a real model as is."""
        memo = f"{role}:{name}"
        if memo in self._models:
            return self._models[memo]
        if M.is_derived(name):
            self._models[memo] = self._pruned_base(name)
            return self._models[memo]
        if not M.is_preset(name):
            self._models[memo] = (name, stable_hash({"model": name}))
            return self._models[memo]
        tok, tok_key = self.student_tokenizer(name) if role == "student" else (self.tokenizer(), self._tok_key)
        spec = {"role": role, "preset": name, "arch": M.MODEL_PRESETS.get(name).as_dict(), "tokenizer": tok_key,
                "n_positions": self.cfg.max_length, "pretrain": train_key(pretrain, teacher=False), "data": self.data_fp()}

        def build(folder: Path):
            model = M.build_preset_model(name, tok, self.cfg.max_length, seed=pretrain.seed)
            blocks = self.pretrain_blocks(tok)
            hist = []
            if blocks is not None and pretrain.steps > 0:
                trainer = Trainer(pretrain, folder, desc=f"pretrain {role}", device=self.cfg.device,
                                  dtype=self.cfg.dtype, progress=self.progress)
                model.to(trainer.device)

                def batches():
                    for idx in infinite_batches(len(blocks), pretrain.batch_size, pretrain.seed):
                        yield lm_batch(blocks[idx])

                hist = trainer.fit(model, lambda b: LossOutput(cross_entropy(model(input_ids=b.input_ids).logits, b.labels)),
                                   batches())
                model = trainer.accelerator.unwrap_model(model)
            M.save_model(model.cpu(), tok, folder / "model")
            atomic_write_json(folder / "history.json", hist)
            (folder / "checkpoint.pt").unlink(missing_ok=True)
            return {"params": M.count_parameters(model), "preset": name}

        folder, key = self.stage(f"{role}-base", spec, build)
        self._models[memo] = (str(folder / "model"), key)
        return self._models[memo]

    def _pruned_base(self, name: str) -> tuple[str, str]:
        """A student base cut from the teacher students distil from (kdbench.pruning)."""
        from .pruning import parse_prune_spec, prune_model

        spec_obj = parse_prune_spec(name)
        t_path, t_key = self.teacher_model()
        spec = {"role": "student", "prune": spec_obj.as_dict(), "teacher": t_key}

        def build(folder: Path):
            teacher = M.load_model(t_path)
            student, kept = prune_model(teacher, spec_obj)
            M.save_model(student, self.tokenizer(), folder / "model")
            n_s, n_t = M.count_parameters(student), M.count_parameters(teacher)
            log.info("student %s: %d of %d teacher layers kept %s; %.1fM params (teacher %.1fM, %.0f%%)", name,
                     len(kept), teacher.config.num_hidden_layers, kept, n_s / 1e6, n_t / 1e6, 100 * n_s / n_t)
            return {"params": n_s, "teacher_params": n_t, "kept_layers": kept, "preset": name}

        folder, key = self.stage("student-pruned", spec, build)
        return str(folder / "model"), key

    def _sft_stage(self, role: str, base: tuple[str, str], train: TrainConfig,
                   track_name: str = "teacher/sft", student: str | None = None) -> tuple[str, str]:
        spec = {"role": role, "base": base[1], "train": train_key(train, teacher=False), "data": self.data_fp(), "method": "sft"}
        select = self.selection_spec() if role == "student" else None
        if select:
            spec["select"] = select
        lora = self.cfg.peft if role == "student" and self.cfg.peft.enabled else None  # students only
        if lora is not None:
            spec["peft"] = lora.spec()
        memo = f"{role}-sft:{stable_hash(spec)}"  # the whole spec: seeds and tuning points differ in it
        if memo in self._models:
            return self._models[memo]

        def build(folder: Path):
            tok = self.student_tokenizer(student)[0] if student else self.tokenizer()
            model = M.load_model(base[0])  # trained: fp32 master weights; --dtype is mixed precision
            if lora is not None:
                model = adapters.wrap(model, lora, train.seed)
            ctx = self.method_context(model, None, train, folder, "sft", role, student=student)
            ctx.selector = self.selector(student) if select else None
            with self.tracked(ctx, track_name, spec):
                make_method("sft").train(ctx)
            model = ctx.trainer.accelerator.unwrap_model(ctx.student)
            counts = adapters.parameter_counts(model)
            if lora is not None:  # methods that start from the SFT student need its merged weights
                adapters.save(model.cpu(), tok, folder, base[0], merged=True)
            else:
                M.save_model(model.cpu(), tok, folder / "model")
            atomic_write_json(folder / "history.json", ctx.history)
            (folder / "checkpoint.pt").unlink(missing_ok=True)
            return {"counters": dict(ctx.counters), "params": counts["total"], "trainable_params": counts["trainable"],
                    **({"selection": ctx.selection} if ctx.selection else {})}

        folder, key = self.stage(f"{role}-sft", spec, build)
        self._models[memo] = (str(folder / "model"), key)
        return self._models[memo]

    def teacher_model(self) -> tuple[str, str]:
        c = self.cfg
        base = self._base_model("teacher", c.teacher, c.build.teacher_pretrain)
        if c.teacher_sft.steps == 0:
            return base
        return self._sft_stage("teacher", base, c.teacher_sft)

    def student_base(self, student: str) -> tuple[str, str]:
        return self._base_model("student", student, self.cfg.build.student_pretrain)

    def student_sft(self, student: str, train_seed: int | None = None, point: dict | None = None) -> tuple[str, str]:
        """The SFT student (the `sft` row and MiniLLM's init), one per training seed (and tuning point)."""
        return self._sft_stage("student", self.student_base(student),
                               self.cfg.train_config_for("sft", train_seed, None, point),
                               tracking.run_name(label_of(student), "sft", train_seed), student)

    # ------------------------------------------------------------------------------------------
    # what a method trains with

    def method_context(self, model, teacher, train: TrainConfig, run_dir: Path, method_name: str, label: str,
                       student: str | None = None):
        tok = self.student_tokenizer(student)[0] if student else self.tokenizer()
        cross = tok is not self.tokenizer()
        ctx = MethodContext(student=model, teacher=teacher, tokenizer=tok,
                            train_examples=self.tasks.train_examples(), train_cfg=train,
                            max_length=self.cfg.max_length, max_prompt_length=self.cfg.max_prompt_length,
                            run_dir=run_dir, pretrain_blocks=self.lpt_blocks(tok),
                            teacher_samples_fn=self.teacher_samples if teacher is not None else None,
                            unlabeled_fn=self.unlabeled_samples if teacher is not None else None,
                            unlabeled_prompts=self.tasks.unlabeled_examples() if teacher is not None else (),
                            device=self.cfg.device, dtype=self.cfg.dtype, method_name=f"{method_name} ({label})",
                            progress=self.progress, teacher_tokenizer=self.tokenizer() if cross else None,
                            teacher_cache_fn=self.teacher_cache_stage if teacher is not None else None)
        ctx.vocab_size = len(tok)  # logits are cut to the real vocabulary (padded embeddings)
        if cross:
            ctx.teacher_vocab_size = len(self.tokenizer())
        return ctx

    @contextmanager
    def tracked(self, ctx, name: str, config: dict):
        """ctx's training logged as tracker run `name` (--report-to; nothing when it is none)."""
        run = tracking.open_run(self.cfg.report_to, name, self.layout.out, config,
                                ctx.trainer.accelerator.is_main_process)
        ctx.trainer.tracker = run
        try:
            yield run
        finally:
            ctx.trainer.tracker = None
            if run is not None:
                run.finish()

    def selection_spec(self) -> dict | None:
        """The dev-selection settings that change a trained model (None when selection is off, so the
        keys of runs without it are unchanged)."""
        sel = self.cfg.select
        if not sel.every:
            return None
        return {**dataclasses.asdict(sel), "metric": self._selection_metric()}

    def _selection_metric(self) -> str:
        return self.cfg.select.metric or self.tasks.get(self.cfg.train_task).primary_metric

    def dev_scorer(self, metric: str = "", max_examples: int | None = None, seed: int | None = None,
                   student: str | None = None):
        """(score_fn(model) -> float, metric, higher_is_better) on the train task's dev split: the
        primary metric (or `metric`) of a sampled evaluation at a fixed seed."""
        from .evaluation import evaluate
        from .metrics.base import METRICS

        c = self.cfg
        task = self.tasks.get(c.train_task)
        if "dev" not in task.splits:
            raise ConfigError(f"task '{c.train_task}' has no dev split to select on (select.every / --tune need one)")
        n = max_examples if max_examples is not None else c.select.max_examples
        dev = self.tasks.filter_prompts(task.examples("dev"), f"{c.train_task}/dev")[:n]
        metric = metric or task.primary_metric
        parent = next((m for m in METRICS.names() if m == metric or metric in METRICS.get(m).sub_directions), metric)
        hib = METRICS.get(parent, "dev metric").direction(metric)
        tok = self.student_tokenizer(student)[0] if student else self.tokenizer()
        s = c.select.seed if seed is None else seed

        # LMOps' selection decoding never blocks n-grams (reference/minillm.md §3.1), only final eval does
        ev = dataclasses.replace(c.eval, no_repeat_ngram_size=0)

        def score(model) -> float:
            res = evaluate(model, tok, task, dev, s, ev, [parent], max_prompt_length=c.max_prompt_length)
            return res.values.get(metric, float("nan"))

        return score, metric, hib

    def selector(self, student: str | None = None):
        """A DevSelector over the train task's dev split, or None (selection off)."""
        from .selection import DevSelector

        if not self.cfg.select.every:
            return None
        score, metric, hib = self.dev_scorer(self._selection_metric(), student=student)
        return DevSelector(self.cfg.select.every, metric, hib, score)

    def place_teacher(self, teacher) -> None:
        where = self.cfg.teacher_device
        teacher.to(get_accelerator(self.cfg.device, self.cfg.dtype).device if where == "same" else where)
