"""Train and eval cells: one folder of work each, skipped when done with the same key.

A train cell trains one student with one method (per training seed); an eval cell evaluates one
model on one task for one evaluation seed. Each writes its frozen config, outputs and a DONE
marker holding its key (kdbench.layout owns the paths). A failing cell writes error.json (message
and traceback) and the run goes on.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path

from . import adapters, ranks, tracking
from . import models as M
from .config import FULL_CACHE_MAX_VOCAB, BenchConfig, stable_hash, to_dict, train_key
from .errors import ConfigError
from .evaluation import eval_cache_spec, evaluate, generate, task_eval_config
from .io import atomic_write_json, atomic_write_jsonl, is_done, mark_done, read_json
from .layout import EvalRecord, RunLayout, TrainResult, label_of
from .method import METHODS, make_method
from .resources import peak_note
from .row_sampling import SAMPLER
from .metrics.base import METRICS, EvalSession
from .stages import Stages, with_dtype
from .taskset import TaskSet
from .trainer import get_accelerator
from .tuning import point_label

log = logging.getLogger("kdbench")


class Cells:
    def __init__(self, cfg: BenchConfig, layout: RunLayout, stages: Stages, tasks: TaskSet):
        self.cfg = cfg
        self.layout = layout
        self.stages = stages
        self.tasks = tasks
        self.failures: list[dict] = []
        self._model_cache: dict = {}  # the evaluated model in memory (one at a time)
        self._teacher_cache: dict = {}  # the teacher for model metrics, loaded on first use
        self.session = EvalSession(run_dir=layout.out)  # run-scoped metric state (judge, teacher samples)

    # ------------------------------------------------------------------------------------------
    # training

    def train_cell(self, student: str, method_name: str, train_seed: int | None = None,
                   point: dict | None = None) -> TrainResult:
        """Train one student with one method (at one tuning grid point); returns its result or raises."""
        c = self.cfg
        cls = METHODS.get(method_name)
        method = make_method(method_name, c.method_config.get(method_name))
        train = c.train_config_for(method_name, train_seed, cls.budget, point)
        if train.teacher_cache == "topk" and not method.reads_teacher_cache():
            # a flattened top-k tail would distort its loss: the live teacher, and the key says so (the full
            # cache is the exact distribution: every method reads it)
            train = dataclasses.replace(train, teacher_cache="none")
        if train.teacher_cache == "full" and method.requires_teacher and \
                len(self.stages.tokenizer()) > FULL_CACHE_MAX_VOCAB:
            # the tiny preset's exact cache with a real model's vocabulary: the live (equally exact) teacher
            log.warning("train.teacher_cache=full is for vocabularies up to %d tokens; this teacher's has %d: %s "
                        "gets the live teacher (train.teacher_cache=topk caches the top k)", FULL_CACHE_MAX_VOCAB,
                        len(self.stages.tokenizer()), method_name)
            train = dataclasses.replace(train, teacher_cache="none")
        cell = self.layout.train_cell(student, method_name, train_seed, point_label(point) if point else None)
        if cls.shared_stage:  # the SFT student is a shared cached stage (MiniLLM's init too)
            return self._stage_cell(cell, student, method_name, train, train_seed, point)
        if method.requires_teacher and not cls.cross_tokenizer and self.stages.cross_tokenizer(student):
            raise ConfigError(f"method '{method_name}' needs the teacher's vocabulary, but student '{student}' has "
                              "its own tokenizer; only cross-tokenizer methods (Method.cross_tokenizer) distil into it")
        teacher_path, teacher_key = self.stages.teacher_model() if method.requires_teacher else (None, None)
        init = (self.stages.student_sft(student, train_seed) if method.student_init == "sft"
                else self.stages.student_base(student))
        frozen = {"method": method_name, "method_config": dataclasses.asdict(method.config),
                  "train": train_key(train, method.requires_teacher),
                  "student": student, "student_init": method.student_init, "init_key": init[1],
                  "teacher": c.teacher if method.requires_teacher else None, "teacher_key": teacher_key,
                  "data": self.stages.data_fp(), "max_length": c.max_length, "max_prompt_length": c.max_prompt_length}
        unlabeled = self.stages.unlabeled_spec() if method.requires_teacher else None
        if unlabeled:  # prompts without gold change what a teacher-guided method learns from
            frozen["unlabeled"] = unlabeled
        if c.pt_corpus and method.uses_pretrain_corpus:  # only then: other keys stay as they were
            frozen["pt_corpus"] = self.stages.pt_corpus_key()
        select = self.stages.selection_spec()
        if select:  # only when on: the keys of runs without selection stay as they were
            frozen["select"] = select
        if c.peft.enabled:  # likewise: full fine-tuning keys are unchanged
            frozen["peft"] = c.peft.spec()
        if cls.budget != "offline":  # methods that sample: rollouts drawn with per-row generators
            frozen["sampler"] = SAMPLER
        frozen = with_dtype(frozen, c.dtype)
        key = stable_hash(frozen)
        name = f"{label_of(student)}/{method_name}" + (f"/train-seed{train_seed}" if train_seed is not None else "")
        # Several ranks: rank 0 reads and writes the cell's files; all ranks train it together.
        if ranks.on_main(lambda: is_done(cell) and read_json(cell / "DONE").get("key") == key
                         and self._deps_current(cell), f"train {name}"):
            log.info("train %s: done, skipping", name)
            return read_json(cell / "result.json")
        ranks.on_main(lambda: self._open_train_cell(cell, key, frozen), f"train {name}")
        t0 = time.time()
        log.info("train %s: starting (init=%s)", name, method.student_init)

        def setup():
            model = M.load_model(init[0])
            if c.peft.enabled:
                model = adapters.wrap(model, c.peft, train.seed)
            teacher = M.load_model(teacher_path, c.dtype) if teacher_path else None  # frozen: loaded in --dtype
            if teacher is not None:
                self.stages.place_teacher(teacher)
            ctx = self.stages.method_context(model, teacher, train, cell, method_name, label_of(student), student)
            ctx.selector = self.stages.selector(student) if select else None
            return ctx

        ctx = ranks.all_ok(setup, f"train {name}")  # a rank that cannot start stops them all, not a hang
        deps = self._record_deps(ctx)
        track = tracking.run_name(label_of(student), method_name, train_seed)
        with self.stages.tracked(ctx, track + (f"/{point_label(point)}" if point else ""), frozen):
            method.train(ctx)
        counters = ranks.sum_counts(ctx.counters, ctx.counters.PER_RUN)  # each rank counted its own work
        log.info("train %s: trained in %.1fs%s", name, time.time() - t0, peak_note())
        return ranks.on_main(lambda: self._close_train_cell(ctx, cell, key, deps, init, method_name, student, train,
                                                            train_seed, t0, counters), f"train {name}")

    @staticmethod
    def _open_train_cell(cell: Path, key: str, frozen: dict) -> None:
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "error.json").unlink(missing_ok=True)
        (cell / "DONE").unlink(missing_ok=True)  # another config's marker must not vouch for the model being replaced
        ckpt = cell / "checkpoint.pt"
        if ckpt.exists() and (not (cell / "config.json").exists() or stable_hash(read_json(cell / "config.json")) != key):
            ckpt.unlink()  # left by a run with another configuration: resuming it would mix the two
        atomic_write_json(cell / "config.json", frozen)

    def _close_train_cell(self, ctx, cell: Path, key: str, deps: dict, init, method_name: str, student: str, train,
                          train_seed, t0: float, counters: dict) -> TrainResult:
        """Save the trained model and the cell's records (rank 0)."""
        c = self.cfg
        cls = METHODS.get(method_name)
        method = make_method(method_name, c.method_config.get(method_name))
        model = ctx.trainer.accelerator.unwrap_model(ctx.student)
        params = adapters.parameter_counts(model)
        if c.peft.enabled:
            model_path = adapters.save(model.cpu(), ctx.tokenizer, cell, init[0], c.peft.save_merged)
        else:
            model_path = cell / "model"
            M.save_model(model.cpu(), ctx.tokenizer, model_path)
        atomic_write_json(cell / "history.json", ctx.history)
        # the model's key for its eval cells: the cell's key, plus what it read (unchanged when nothing)
        model_key = stable_hash({"cell": key, "depends": deps}) if deps else key
        res: TrainResult = {"model_path": str(model_path), "key": model_key, "method": method_name, "student": student,
                            "wall_time_s": round(time.time() - t0, 2), "counters": counters,
                            "params": params}
        if train_seed is not None:
            res["train_seed"] = train_seed
        res["budget"] = {"steps": train.steps, "batch_size": train.batch_size, "lr": train.lr,
                         "budget_class": cls.budget, "init": method.student_init}
        if ctx.variant:
            res["variant"] = ctx.variant
        if ctx.selection:
            res["selected_step"] = ctx.selection["selected_step"]
            res["selection"] = ctx.selection
        atomic_write_json(cell / "result.json", res)
        (cell / "checkpoint.pt").unlink(missing_ok=True)
        mark_done(cell, {"key": key, "depends": deps})
        return res

    # Stages a method may or may not read, found out while it trains (seqkd, or js/tvd with data
    # teacher, read the teacher samples; kd does not): recorded in DONE and checked on a rerun, so a
    # changed sample stage retrains exactly the cells that read it.
    def _record_deps(self, ctx) -> dict:
        deps: dict = {}

        def recording(read):
            def samples():
                deps["teacher-samples"] = self.stages.teacher_samples_key()
                return read()
            return samples

        # the teacher's samples on train prompts (seqkd ...) and on prompts without gold (every
        # teacher-guided method's guided examples)
        for attr in ("_teacher_samples_fn", "_unlabeled_fn"):
            if getattr(ctx, attr) is not None:
                setattr(ctx, attr, recording(getattr(ctx, attr)))
        # the teacher-cache stages it read (TrainConfig.teacher_cache): their keys reach the eval cells
        stage_fn = ctx._teacher_cache_fn
        if stage_fn is not None:
            def cache_stage(spec, build):
                folder, key = stage_fn(spec, build)
                deps.setdefault("teacher-cache", []).append(key)
                return folder, key
            ctx._teacher_cache_fn = cache_stage
        return deps

    def _deps_current(self, cell: Path) -> bool:
        deps = read_json(cell / "DONE").get("depends") or {}
        return all(key == self.stages.teacher_samples_key() for name, key in deps.items() if name == "teacher-samples")

    def _stage_cell(self, cell: Path, student: str, method_name: str, train, train_seed, point=None) -> TrainResult:
        """A method whose student is a cached stage (sft): the cell records and points at it."""
        t0 = time.time()
        path, key = self.stages.student_sft(student, train_seed, point)
        return ranks.on_main(lambda: self._record_stage_cell(cell, student, method_name, train, train_seed, t0, path,
                                                             key), f"train {method_name}")

    def _record_stage_cell(self, cell: Path, student: str, method_name: str, train, train_seed, t0: float, path: str,
                           key: str) -> TrainResult:
        if is_done(cell) and read_json(cell / "DONE").get("key") == key:  # finished: leave it as it is
            return {**read_json(cell / "result.json"), "model_path": path}
        res: TrainResult = {"model_path": path, "key": key, "method": method_name, "student": student,
                            "wall_time_s": round(time.time() - t0, 2)}
        if train_seed is not None:
            res["train_seed"] = train_seed
        stage_done = read_json(Path(path).parent / "DONE")
        res["train_wall_time_s"] = stage_done.get("wall_time_s")
        res["counters"] = stage_done.get("counters", {})
        if stage_done.get("trainable_params") is not None:
            res["params"] = {"trainable": stage_done["trainable_params"], "total": stage_done["params"]}
        res["budget"] = {"steps": train.steps, "batch_size": train.batch_size, "lr": train.lr,
                         "budget_class": METHODS.get(method_name).budget, "init": "base"}
        if stage_done.get("selection"):
            res["selected_step"] = stage_done["selection"]["selected_step"]
            res["selection"] = stage_done["selection"]
        cell.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cell / "config.json", {"method": method_name, "train": to_dict(train), "student": student})
        hist = Path(path).parent / "history.json"
        if hist.exists():
            atomic_write_json(cell / "history.json", read_json(hist))
        atomic_write_json(cell / "result.json", res)
        mark_done(cell, {"key": key})
        return res

    def dev_score(self, res: TrainResult, cell: Path, metric: str = "") -> float:
        """The trained model's dev score (tuning), cached in the cell next to its result."""
        score_fn, name, _ = self.stages.dev_scorer(metric, student=res.get("student"))
        f = cell / "dev_score.json"

        def cached():
            rec = read_json(f) if f.exists() else {}
            return float(rec["score"]) if rec.get("key") == res["key"] and rec.get("metric") == name else None

        value = ranks.on_main(cached, "dev score")
        if value is not None:
            return value
        value = float(score_fn(ranks.all_ok(lambda: self._load_cached(res["model_path"]), "dev score")))
        ranks.on_main(lambda: atomic_write_json(f, {"key": res["key"], "metric": name, "score": value}), "dev score")
        return value

    # ------------------------------------------------------------------------------------------
    # evaluation

    def eval_cell(self, group: str, model_label: str, model_path: str, model_key: str, task_name: str,
                  seed: int, train_seed: int | None = None) -> EvalRecord:
        c = self.cfg
        task = self.tasks.get(task_name)
        metrics = list(c.eval.metrics or task.default_metrics)
        cell = self.layout.eval_cell(group, model_label, task_name, seed, train_seed)
        settings = {"judge": dict(c.judge)}
        ev = task_eval_config(c.eval, task)  # the task's defaults resolved: the key holds what ran
        # each metric adds what changes its numbers (e.g. which judge) to the key
        # the cell's own seed is in the key, the list of seeds is not: adding a seed keeps the others
        protocol = {k: v for k, v in to_dict(ev).items() if k != "seeds"}
        spec = {"model": model_key, "task": task.fingerprint(), "eval": protocol, "seed": seed,
                **eval_cache_spec(metrics, settings), "max_prompt_length": c.max_prompt_length,
                "sampler": SAMPLER}  # how the generations are drawn (a generator per prompt)
        spec = with_dtype(spec, c.dtype)
        key = stable_hash(spec)
        what = f"eval {model_label} on {task_name} seed {seed}"
        if ranks.on_main(lambda: is_done(cell) and read_json(cell / "DONE").get("key") == key, what):
            return read_json(cell / "metrics.json")

        def open_cell():
            cell.mkdir(parents=True, exist_ok=True)
            (cell / "error.json").unlink(missing_ok=True)

        ranks.on_main(open_cell, what)
        exs = self.tasks.test_examples(task_name)
        t0 = time.time()
        tok = self.stages.tokenizer_for_group(group)
        model = ranks.all_ok(lambda: self._load_cached(model_path), what)
        # every rank samples its share of the prompts; rank 0 computes the metrics and writes the cell
        roll = generate(model, tok, exs, seed, ev, c.max_prompt_length)
        return ranks.on_main(lambda: self._score_eval_cell(cell, key, spec, group, model_label, model, tok, task, exs,
                                                           seed, ev, metrics, settings, roll, t0, train_seed, task_name),
                                  what)

    def _score_eval_cell(self, cell: Path, key: str, spec: dict, group: str, model_label: str, model, tok, task, exs,
                         seed: int, ev, metrics: list, settings: dict, roll, t0: float, train_seed, task_name: str
                         ) -> EvalRecord:
        c = self.cfg
        # the teacher as a metric's oracle (exposure bias) scores the model's tokens: only with one vocabulary
        teacher_fn = self._eval_teacher if tok is self.stages.tokenizer() else (lambda: None)
        res = evaluate(model, tok, task, exs, seed, ev, metrics,
                       max_prompt_length=c.max_prompt_length, model_label=model_label, teacher_fn=teacher_fn,
                       settings=settings, run_dir=self.layout.out, session=self.session, rollout=roll)
        atomic_write_jsonl(cell / "generations.jsonl", res.generations)
        atomic_write_jsonl(cell / "per_example.jsonl", res.per_example)  # what the statistics resample
        out: EvalRecord = {"group": group, "model": model_label, "task": task_name, "seed": seed,
                           "metrics": res.values,
                           "n_examples": len(exs), "task_version": task.version,
                           "metric_versions": {m: METRICS.get(m).version for m in metrics},
                           "artifacts": res.artifacts, "wall_time_s": round(time.time() - t0, 2)}
        if train_seed is not None:
            out["train_seed"] = train_seed
        atomic_write_json(cell / "config.json", spec)
        atomic_write_json(cell / "metrics.json", out)
        mark_done(cell, {"key": key})
        log.info("eval %s on %s seed %s: done in %.1fs%s", model_label, task_name, seed, out["wall_time_s"], peak_note())
        return out

    def _eval_teacher(self):
        """The teacher for model metrics (exposure bias); loaded once, only when a metric asks."""
        path, _ = self.stages.teacher_model()
        # keyed by path: another benchmark's teacher would silently change this one's numbers
        if path not in self._teacher_cache:
            self._teacher_cache.clear()
            device = get_accelerator(self.cfg.device, self.cfg.dtype).device
            self._teacher_cache[path] = M.load_model(path, self.cfg.dtype).to(device).eval()
        return self._teacher_cache[path]

    def _load_cached(self, path: str):
        if path not in self._model_cache:
            self._model_cache.clear()  # keep one model in memory at a time
            device = get_accelerator(self.cfg.device, self.cfg.dtype).device
            self._model_cache[path] = M.load_model(path, self.cfg.dtype).to(device)
        return self._model_cache[path]

    # ------------------------------------------------------------------------------------------
    # failures

    def record_failure(self, kind: str, name: str, student: str | None, err: Exception, cell: Path, **extra) -> None:
        """Every rank keeps the failure (the run's exit status); rank 0 writes error.json. Several
        ranks fail a cell together (kdbench.ranks), so no rank goes on while another waits."""
        rec = {"kind": kind, "name": name, "student": student, "error": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc(), **extra}
        if ranks.is_main():
            cell.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cell / "error.json", rec)
        log.error("%s %s%s failed: %s (details: %s)", kind, name, f" [{student}]" if student else "", rec["error"],
                  cell / "error.json")
        self.failures.append({k: v for k, v in rec.items() if k != "traceback"})
