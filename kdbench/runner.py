"""Plan and execute a benchmark: validate everything, build stages, run train and eval cells, summarize.

    validate (names, configs, models, data, output folder) -> plan -> stages (kdbench.stages)
    -> train cells, eval cells (kdbench.cells) -> summary (kdbench.report)

Where things live on disk is kdbench.layout's business; what a stage or cell computes is theirs.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch

from . import models as M
from . import ranks, tracking
from .cells import Cells
from .config import BenchConfig, to_dict
from .errors import ConfigError, KdbenchError
from .registry import suggest
from .io import atomic_write_json, read_json
from .layout import TEACHER, TEACHER_GROUP, BASE, RunLayout, label_of
from .method import METHODS, make_method
from .metrics.base import METRICS
from .plugins import load_plugins
from .stages import Stages
from .task import TASKS
from .taskset import TaskSet
from .tuning import parse_grid, point_label, select

log = logging.getLogger("kdbench")


class Benchmark:
    def __init__(self, cfg: BenchConfig, out_dir: Path, cache_dir: Path | None = None, progress: bool = True):
        load_plugins()
        if ranks.launched_world() > 1:  # several processes (torchrun): start the process group now
            from .trainer import get_accelerator

            get_accelerator(cfg.device, cfg.dtype)
        self.cfg = cfg
        self.layout = RunLayout(out_dir, cache_dir)
        self.out = self.layout.out
        self.progress = progress
        self.tasks = TaskSet(cfg, lambda: self.stages.tokenizer())
        self.stages = Stages(cfg, self.layout, self.tasks, progress)
        self.cells = Cells(cfg, self.layout, self.stages, self.tasks)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    @property
    def failures(self) -> list[dict]:
        return self.cells.failures

    # ------------------------------------------------------------------------------------------
    # validation (before any expensive work)

    def validate(self, data: bool = True) -> None:
        """Everything checkable before work; data=False skips loading task data (the dry run
        loads it itself, task by task, to report every task rather than stop at the first)."""
        cfg = self.cfg
        for m in cfg.methods:
            make_method(m, cfg.method_config.get(m))
        for m in cfg.method_config:
            METHODS.get(m, "method_config")
        for m in cfg.method_train:
            METHODS.get(m, "method_train")
            cfg.train_config_for(m, None, METHODS.get(m).budget)
        for name in cfg.eval.metrics or []:
            METRICS.get(name, "eval.metrics")
        tracking.check_available(cfg.report_to)
        if cfg.peft.enabled and importlib.util.find_spec("peft") is None:
            raise ConfigError("--peft lora / peft.method: the 'peft' package is not installed; pip install 'kdbench[peft]'")
        if cfg.tune:
            parse_grid(cfg.tune)  # bad keys or empty lists fail before any work
            if "dev" not in self.tasks.get(cfg.train_task).splits:
                raise ConfigError(f"--tune: task '{cfg.train_task}' has no dev split to select on")
        classes = sorted({METHODS.get(n).budget for n in METHODS.names()})
        for b in cfg.budget_train:  # a misspelt class would silently leave its methods on the distill budget
            if b not in classes:
                raise ConfigError(f"config key 'budget_train.{b}': no method has budget class '{b}'; "
                                  f"valid: {', '.join(classes)}." + suggest(b, classes))
        budgets = [("teacher_sft", cfg.teacher_sft), ("build.teacher_pretrain", cfg.build.teacher_pretrain),
                   ("build.student_pretrain", cfg.build.student_pretrain)]
        budgets += [(f"the training of '{m}'", cfg.train_config_for(m, None, METHODS.get(m).budget)) for m in cfg.methods]
        for where, tc in budgets:
            if 0 < tc.steps <= tc.warmup_steps:
                log.warning("%s: warmup_steps %d >= steps %d, so the learning rate never reaches its peak",
                            where, tc.warmup_steps, tc.steps)
        for m in cfg.methods:  # a zero budget from a budget class or a method's own overrides
            if cfg.train_config_for(m, None, METHODS.get(m).budget).steps < 1:
                src = (f"method_train.{m}" if "steps" in cfg.method_train.get(m, {}) else
                       f"budget_train.{METHODS.get(m).budget}")
                raise ConfigError(f"config key '{src}.steps': 0 steps would leave '{m}' untrained (its row would be "
                                  "its initial student under the method's name); give it >= 1 step")
        if cfg.select.every:  # the dev score runs on the trainer's logging steps
            for m in cfg.methods:
                tc = cfg.train_config_for(m, None, METHODS.get(m).budget)
                if cfg.select.every % tc.log_every:
                    raise ConfigError(f"config key 'select.every': {cfg.select.every} is not a multiple of "
                                      f"{m}'s log_every {tc.log_every}; use a multiple of it")
        if cfg.pt_corpus:
            from .corpus import check_files

            check_files(cfg.pt_corpus)  # a missing corpus file fails before any training
        for t in cfg.task_options:  # a misspelt task name would silently drop its options
            TASKS.get(t, "task_options")
        from .metrics.judge import judge_settings

        judge_backend, judge_cfg, _ = judge_settings(cfg.judge)  # a bad judge backend/key fails here, not in every eval cell
        M.check_model_name(cfg.teacher, "--teacher")
        for s in cfg.students:
            M.check_model_name(s, "--student")
        M.check_placement(cfg.device, cfg.teacher_device)
        self._check_tokenizers()  # a tokenizer mismatch fails here, before any work
        for t in self.tasks.all_names():
            self.tasks.get(t)
        if not self.tasks.get(cfg.train_task).has_train:
            raise ConfigError(f"config key 'train_task': task '{cfg.train_task}' has no train split; "
                              f"tasks with one: {', '.join(self.tasks.trainable())}")
        if judge_backend == "openai" and any("judge" in (cfg.eval.metrics or self.tasks.get(t).default_metrics)
                                             for t in cfg.tasks):
            from .metrics.judge import judge_available

            ok, why = judge_available(judge_cfg)  # asked for explicitly: fail now, not skip after training
            if not ok:
                raise ConfigError(f"config key 'judge.backend' is 'openai' (--judge-backend), but: {why}. Set "
                                  f"${judge_cfg.api_key_env} and judge.model (--judge-model), or judge.base_url "
                                  "(--judge-base-url) for an OpenAI-compatible endpoint; or use judge.backend 'auto' "
                                  "(oracle on the toy world, judge skipped elsewhere) or 'oracle'")
        if not data:
            return
        for t in self.tasks.all_names():  # load data now so malformed files fail before training
            task = self.tasks.get(t)
            for split in (["train"] if t == cfg.train_task else []) + ["test"]:
                if not task.examples(split):
                    raise KdbenchError(f"task '{t}': split '{split}' is empty")
        n_train = len(self.tasks.get(cfg.train_task).examples("train"))
        for m in cfg.methods:  # data.infinite_batches repeats examples inside such a batch
            bs = cfg.train_config_for(m, None, METHODS.get(m).budget).batch_size
            if bs > n_train:
                log.warning("%s: batch_size %d is larger than the %d train examples of '%s': every batch repeats "
                            "examples", m, bs, n_train, cfg.train_task)
        if not ranks.is_main():  # rank 0 alone writes the run folder
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"--out: output folder '{self.out}' is not writable ({e.strerror}); "
                              "choose a folder you can write to") from None

    def _check_tokenizers(self) -> None:
        """Teacher and student may differ in tokenizer only when every method that distils from the
        teacher declares it can (Method.cross_tokenizer); sft and the base need no teacher."""
        from .errors import ModelError
        from .stages import cross_tokenizer_methods, methods_needing_one_vocab

        cfg = self.cfg
        bad = methods_needing_one_vocab(cfg)
        ok = ", ".join(cross_tokenizer_methods()) or "none"
        if bad and cfg.build.student_tokenizer != "same" and any(M.is_preset(s) for s in cfg.students):
            raise ConfigError(f"config key 'build.student_tokenizer' is '{cfg.build.student_tokenizer}': students get "
                              f"their own tokenizer, but method(s) {', '.join(bad)} need the teacher's vocabulary. "
                              f"Methods that distil across tokenizers: {ok}; or set build.student_tokenizer to 'same'")
        try:
            M.check_real_models(cfg.teacher, cfg.students, cross_ok=not bad)
        except ModelError as e:
            if "tokenizers differ" not in str(e):
                raise
            raise ModelError(f"{e} Methods that distil across tokenizers: {ok}; {', '.join(bad)} cannot.") from None

    # ------------------------------------------------------------------------------------------
    # the whole benchmark

    def run(self) -> list[dict]:
        from .lock import FolderLock

        self.validate()
        locks: list = []

        def lock() -> None:  # rank 0 holds the locks for all the ranks of its run
            locks.append(FolderLock(self.out).acquire())
            cache, out = self.layout.cache.resolve(), self.out.resolve()
            if cache != out and out not in cache.parents:  # a path prefix is not a parent (/d/run, /d/run-cache)
                locks.append(FolderLock(self.layout.cache, "stage cache").acquire())

        try:
            ranks.on_main(lock, "locking the output folder")
            return self._run()
        finally:
            for lk in locks:
                lk.release()

    def _run(self) -> list[dict]:
        c = self.cfg
        cells = self.cells
        t_start = time.time()
        ranks.on_main(lambda: atomic_write_json(self.layout.config, to_dict(c)), "writing config.json")
        self.stages.tokenizer()
        self.tasks.train_examples()  # the prompt-length filter: a task left with no prompt fails before training
        for t in c.tasks:
            self.tasks.test_examples(t)
        models: list[tuple[str, str, str, str, int | None]] = []  # (group, label, path, key, train seed)
        try:
            t_path, t_key = self.stages.teacher_model()
            models.append((TEACHER_GROUP, TEACHER, t_path, t_key, None))
        except Exception as e:  # noqa: BLE001 - nothing that needs the teacher can run
            cells.record_failure("stage", "teacher", None, e, self.layout.teacher_failure())
            t_path = None
        for student in c.students:
            group = label_of(student)
            try:
                models.append((group, BASE, *self.stages.student_base(student), None))
            except Exception as e:  # noqa: BLE001
                cells.record_failure("stage", BASE, student, e, self.layout.base_failure(student))
                continue
            for m in c.methods:
                if METHODS.get(m).requires_teacher and t_path is None:
                    for ts in c.train_seed_list():
                        cells.record_failure("train", m, student, KdbenchError("teacher stage failed"),
                                             self.layout.train_cell(student, m, ts), train_seed=ts)
                    continue
                trained = self._tune(student, m) if c.tune else self._train(student, m, None)
                models += [(group, m, res["model_path"], res["key"], ts) for ts, res in trained]
        try:
            self._evaluate_all(models)
        finally:
            self.cells.session.close()  # judge clients and caches of this run
        # rank 0 writes the run's records and reports; every rank returns the leaderboard rows
        return ranks.on_main(lambda: self._summarize(t_start), "summarize")

    def _summarize(self, t_start: float) -> list[dict]:
        atomic_write_json(self.layout.run_info, {"wall_time_s": round(time.time() - t_start, 2),
                                                 "processes": ranks.launched_world(), "failures": self.failures})
        from .report import summarize

        marker = self.layout.summary_marker
        if not self.failures and self._summary_is_current(marker):
            # Nothing new since the last summary: print it instead of re-rendering every plot.
            print((self.out / "leaderboard.md").read_text(encoding="utf-8"))
            print(f"leaderboard: {self.out / 'leaderboard.md'} (up to date; `summarize` rebuilds it)")
            return read_json(self.out / "leaderboard.json")
        rows = summarize(self.out)
        atomic_write_json(marker, {"rows": len(rows)})  # written last: the summary is complete
        return rows

    def _train(self, student: str, m: str, point: dict | None) -> list[tuple[int | None, dict]]:
        """Every training seed of one (student, method[, grid point]); failures recorded, not raised."""
        out = []
        for ts in self.cfg.train_seed_list():
            try:
                out.append((ts, self.cells.train_cell(student, m, ts, point)))
            except Exception as e:  # noqa: BLE001 - recorded; other cells go on
                where = self.layout.train_cell(student, m, ts, point_label(point) if point else None)
                self.cells.record_failure("train", m, student, e, where, train_seed=ts)
        return out

    def _tune(self, student: str, m: str) -> list[tuple[int | None, dict]]:
        """--tune: train at every grid point, score each on dev, keep the selected point's models."""
        c = self.cfg
        grid = parse_grid(c.tune)
        runs: dict[str, list] = {}
        scores: dict[str, list[float]] = {}
        t0 = time.time()
        for point in grid:
            label = point_label(point)
            runs[label] = self._train(student, m, point)
            scores[label] = []
            for ts, res in runs[label]:
                cell = self.layout.train_cell(student, m, ts, label)
                try:
                    scores[label].append(self.cells.dev_score(res, cell, c.tune_metric))
                except Exception as e:  # noqa: BLE001
                    self.cells.record_failure("train", m, student, e, cell, train_seed=ts)
        _, metric, hib = self.stages.dev_scorer(c.tune_metric)
        best = select(scores, hib)
        ranks.on_main(lambda: atomic_write_json(self.layout.tuning(student, m), {
            "student": student, "method": m, "metric": metric, "higher_is_better": hib, "selected": best,
            "grid": [{"point": p, "label": point_label(p), "dev": scores[point_label(p)],
                      "dev_mean": (sum(scores[point_label(p)]) / len(scores[point_label(p)])
                                   if scores[point_label(p)] else None)} for p in grid],
            "wall_time_s": round(time.time() - t0, 2)}), "tuning record")
        log.info("tune %s/%s: selected %s on dev %s", label_of(student), m, best, metric)
        return runs[best]

    def _summary_is_current(self, marker: Path) -> bool:
        if not marker.exists() or not (self.out / "leaderboard.json").exists():
            return False
        newest = max((p.stat().st_mtime for p in self.layout.cells.glob("**/DONE")), default=0.0)
        errors = list(self.layout.cells.glob("**/error.json"))
        return not errors and marker.stat().st_mtime >= newest

    def _evaluate_all(self, models) -> None:
        from tqdm.auto import tqdm

        c = self.cfg
        jobs = [(m, t, s) for m in models for t in c.tasks for s in c.eval.seeds]
        bar = tqdm(total=len(jobs), desc="evaluate", leave=False, disable=not self.progress or not ranks.is_main(),
                   dynamic_ncols=True)
        done: dict[tuple, list[dict]] = {}  # trained model -> its eval records (for --report-to)
        for (group, label, path, key, ts), task_name, seed in jobs:
            try:
                rec = self.cells.eval_cell(group, label, path, key, task_name, seed, ts)
                done.setdefault((group, label, ts), []).append(rec)
            except Exception as e:  # noqa: BLE001
                cell = self.layout.eval_cell(group, label, task_name, seed, ts)
                self.cells.record_failure("eval", label, group, e, cell, task=task_name, seed=seed, train_seed=ts)
            bar.update(1)
        bar.close()
        if c.report_to != "none" and ranks.is_main():
            for (group, label, ts), recs in done.items():
                if label in METHODS and not c.tune:  # trained students (a tuned run's cells carry a point)
                    steps = c.train_config_for(label, ts, METHODS.get(label).budget).steps
                    tracking.log_eval(c.report_to, tracking.run_name(group, label, ts), self.out, recs, steps)

    def dry_run(self):
        """--dry-run: what would load and run, without training or writing (kdbench/dry_run.py)."""
        from .dry_run import dry_run

        return dry_run(self.cfg, self.tasks)
