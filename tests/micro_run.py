"""Helpers for tests that run whole benchmarks: a micro version of the `ci` preset (every stage,
a few steps each, checkpoints every 2 steps) and a driver that SIGKILLs its own process at an exact
moment, for resume tests that must not depend on timing.

    python tests/micro_run.py KILL -- <run_bench.py arguments>

KILL is one of
    ckpt:<text>:<n>   right after the n-th checkpoint.pt whose path contains <text> is written
    done:<text>       right after the DONE marker of a folder whose path contains <text> is written
                      (for a stage: in its .partial folder, before the rename)
    gens:<n>          right after the n-th eval cell wrote generations.jsonl (before its metrics)
    none              never

Plots are skipped (set MICRO_RUN_PLOTS=1 to keep them).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MICRO = ["--preset", "ci", "--no-progress",
         "--set", "threads=1",
         "--set", "build.teacher_pretrain.steps=6", "--set", "build.student_pretrain.steps=4",
         "--set", "teacher_sft.steps=6", "--set", "distill.steps=6",
         "--set", "build.teacher_pretrain.checkpoint_every=2", "--set", "build.student_pretrain.checkpoint_every=2",
         "--set", "teacher_sft.checkpoint_every=2", "--set", "distill.checkpoint_every=2",
         "--set", "build.teacher_pretrain.log_every=3", "--set", "distill.log_every=3",
         "--set", "eval.seeds=[10]", "--set", "eval.max_examples=6",
         "--set", "task_options.toy.n_train=48", "--set", "task_options.toy.pretrain_docs=48",
         "--set", "task_options.toy.n_test=6", "--set", "task_options.toy.n_unlabeled=12"]


def skip_plots() -> None:
    """Summaries without plots: matplotlib takes most of a micro run's time, and no test here looks
    at the figures (tests/report/test_report.py does)."""
    import kdbench.report.plots as plots

    plots.make_plots = lambda run, plot_dir: ([], [])


def fork_run(kill: str, args: list[str], log: Path) -> int:
    """Run the benchmark in a forked child (a real process, killable by SIGKILL, without paying
    the imports again); returns its exit code (-9 when it killed itself). Output goes to `log`."""
    import multiprocessing

    def child() -> None:
        f = open(log, "w", buffering=1)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        _install(kill)
        from kdbench.cli import main

        code = main(args)
        f.flush()
        os._exit(code)

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    p.join()
    return p.exitcode


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", KDBENCH_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false",
             HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    e.update(extra)
    return e


def run(kill: str, args: list[str], timeout: float = 120, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), kill, "--", *args], cwd=ROOT,
                          env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def eval_metrics(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out).parent): json.loads(p.read_text())["metrics"]
            for p in sorted(out.glob("cells/eval/*/*/*/seed*/metrics.json"))}


def trained_weights(out: Path, cache: Path) -> dict[str, bytes]:
    """Weights of every trained model: cache stages (folders named by config hash) and train cells."""
    files = sorted(cache.glob("*/model/model.safetensors")) + sorted(out.glob("cells/train/*/*/model/model.safetensors"))
    return {f"{p.parent.parent.name}": p.read_bytes() for p in files}


def _install(kill: str) -> None:
    if kill == "none":
        return
    import kdbench.cells as cells
    import kdbench.stages as stages
    import kdbench.trainer as trainer

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    kind, _, rest = kill.partition(":")
    if kind == "ckpt":
        text, n = rest.rsplit(":", 1)
        seen = [0]
        real = trainer.atomic_torch_save

        def save(obj, path):
            real(obj, path)
            if text in str(path):
                seen[0] += 1
                if seen[0] == int(n):
                    die()

        trainer.atomic_torch_save = save
    elif kind == "done":
        real_done = cells.mark_done  # the same function in both modules (kdbench.io.mark_done)

        def mark(folder, info=None):
            real_done(folder, info)
            if rest in str(folder):
                die()

        cells.mark_done = stages.mark_done = mark
    elif kind == "gens":
        real_jsonl = cells.atomic_write_jsonl
        count = [0]

        def write(path, rows):
            real_jsonl(path, rows)
            if Path(path).name == "generations.jsonl":
                count[0] += 1
                if count[0] == int(rest):
                    die()

        cells.atomic_write_jsonl = write
    else:
        raise SystemExit(f"unknown kill spec {kill!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    spec, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: micro_run.py KILL -- ARGS"
    _install(spec)
    if os.environ.get("MICRO_RUN_PLOTS") != "1":
        skip_plots()
    from kdbench.cli import main

    sys.exit(main(argv))
