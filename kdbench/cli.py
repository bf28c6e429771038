"""Command line: `python run_bench.py [options]` and `python run_bench.py summarize DIR`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, KdbenchError

EPILOG = """examples:
  python run_bench.py                                   # the default benchmark (preset tiny, toy world)
  python run_bench.py --preset ci --out /tmp/kd          # the smallest end-to-end run
  python run_bench.py --methods sft,kd --seeds 10,20,30 --set distill.lr=1e-3
  python run_bench.py summarize results/tiny             # rebuild the leaderboard from cells
  python run_bench.py summarize results/tiny --baseline kd   # delta table against kd instead of sft
  python run_bench.py summarize runA runB --out merged  # one leaderboard from runs made elsewhere
  python run_bench.py --list                            # registered methods, tasks, metrics, presets
"""


def _prog() -> str:
    """`kdbench` when run as the installed console script, else `run_bench.py`."""
    return "kdbench" if Path(sys.argv[0]).name == "kdbench" else "run_bench.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_prog(), description="kdbench: compare knowledge-distillation methods for LLMs",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--methods", help="comma-separated method names, or 'all'")
    p.add_argument("--tasks", help="comma-separated task names to evaluate on, or 'all'")
    p.add_argument("--train-task", help="task whose train split trains teacher and students (default: toy)")
    p.add_argument("--preset", default="tiny", help="benchmark preset (default: tiny)")
    p.add_argument("--teacher", help="teacher: model preset, hub name or local path")
    p.add_argument("--student", help="student(s), comma-separated: model preset, hub name or local path")
    p.add_argument("--seeds", help="evaluation seeds, comma-separated (MiniLLM: 10,20,30,40,50)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="quick look: at most N test examples per task, N train examples and N steps per "
                        "training stage (applied after the preset, --config and --set)")
    p.add_argument("--out", help="output folder (default: results/<preset>)")
    p.add_argument("--cache-dir", help="stage cache (default: <out>/cache); share it across runs to reuse teachers")
    p.add_argument("--data-dir", help="folder with real task data (also env KDBENCH_DATA)")
    p.add_argument("--config", help="YAML file with config overrides")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set distill.lr=1e-3 (repeatable)")
    p.add_argument("--train-seeds", help="training seeds, comma-separated: one train cell per method and seed "
                                         "(CIs then include training-seed variance)")
    p.add_argument("--tune", action="append", default=[], metavar="KEY=V1,V2",
                   help="tuning grid over a training setting, the same for every method, selected on the dev "
                        "split, e.g. --tune lr=1e-3,3e-3 (repeatable)")
    p.add_argument("--tune-metric", help="dev metric the tuning selects by (default: the train task's primary)")
    p.add_argument("--baseline", help="method the comparisons and the delta table use as baseline (default sft)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16")
    p.add_argument("--teacher-device", help="same | cpu | cuda:N (where the teacher sits)")
    p.add_argument("--judge-model", help="LLM judge model name (OpenAI-compatible endpoint)")
    p.add_argument("--judge-base-url", help="LLM judge endpoint base URL (key from $OPENAI_API_KEY)")
    p.add_argument("--judge-backend", help="auto | oracle | openai (auto: oracle on the toy world)")
    p.add_argument("--peft", choices=("none", "lora"),
                   help="train students through adapters (peft.method; tune with --set peft.r=16 etc.)")
    p.add_argument("--report-to", choices=("none", "tensorboard", "wandb", "trackio"),
                   help="experiment tracker for every train cell's curves, eval metrics and config (default none)")
    p.add_argument("--list", action="store_true", help="list methods, tasks, metrics and presets, then exit")
    p.add_argument("--dry-run", action="store_true",
                   help="validate config, models and data; print the plan and, per task, examples loaded/dropped "
                        "and one prompt; train nothing. Exit 0 if every task is ready or only lacks its data "
                        "(listed as unavailable), 2 on errors (bad config, malformed data, no train data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def list_registered() -> str:
    from .method import METHODS
    from .metrics.base import METRICS
    from .models import MODEL_PRESETS
    from .plugins import load_plugins
    from .presets import PRESETS
    from .task import TASKS

    load_plugins()
    lines = []
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("metrics", METRICS), ("presets", PRESETS),
                       ("model presets", MODEL_PRESETS)):
        lines.append(f"{title}:")
        width = max((len(n) for n in reg.names()), default=0)
        for n in reg.names():
            lines.append(f"  {n.ljust(width)}  {reg.describe(n)}")
    return "\n".join(lines)


def resolve_config(args: argparse.Namespace):
    """preset -> YAML -> flags -> --set, validated into a BenchConfig."""
    import yaml

    from .config import BenchConfig, deep_update, from_dict, set_dotted
    from .method import METHODS
    from .plugins import load_plugins
    from .presets import PRESETS
    from .registry import parse_names
    from .task import TASKS

    load_plugins()
    data: dict = {"preset": args.preset}
    data = deep_update(data, PRESETS.get(args.preset, "--preset"))
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"--config: file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"--config {where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: expected a mapping of config keys at the top level")
        data = deep_update(data, loaded)
    if args.methods:
        data["methods"] = parse_names(args.methods, METHODS, "--methods")
    if args.tasks:
        data["tasks"] = parse_names(args.tasks, TASKS, "--tasks")
    if args.train_task:
        TASKS.get(args.train_task, "--train-task")
        data["train_task"] = args.train_task
    if args.teacher:
        data["teacher"] = args.teacher
    if args.student:
        data["students"] = [s.strip() for s in args.student.split(",") if s.strip()]
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers like 10,20,30, got '{args.seeds}'") from None
        data.setdefault("eval", {})["seeds"] = seeds
    if getattr(args, "train_seeds", None):
        try:
            data["train_seeds"] = [int(x) for x in args.train_seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--train-seeds: expected comma-separated integers like 1,2,3, got "
                              f"'{args.train_seeds}'") from None
    for item in getattr(args, "tune", None) or []:
        if "=" not in item:
            raise ConfigError(f"--tune '{item}': expected KEY=V1,V2,..., e.g. --tune lr=1e-3,3e-3")
        k, v = item.split("=", 1)
        data.setdefault("tune", {})[k.strip()] = [_number(x.strip()) for x in v.split(",") if x.strip()]
    if getattr(args, "baseline", None):
        METHODS.get(args.baseline, "--baseline")
        data["baseline"] = args.baseline
    if getattr(args, "tune_metric", None):
        data["tune_metric"] = args.tune_metric
    data_dir = args.data_dir or os.environ.get("KDBENCH_DATA")
    if data_dir:
        data["data_dir"] = data_dir
    for flag, key in (("device", "device"), ("dtype", "dtype"), ("teacher_device", "teacher_device")):
        if getattr(args, flag):
            data[key] = getattr(args, flag)
    if getattr(args, "peft", None):
        data.setdefault("peft", {})["method"] = args.peft
    if getattr(args, "report_to", None):
        data["report_to"] = args.report_to
    for flag, key in (("judge_model", "model"), ("judge_base_url", "base_url"), ("judge_backend", "backend")):
        if getattr(args, flag):
            data.setdefault("judge", {})[key] = getattr(args, flag)
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set distill.lr=1e-3")
        k, v = item.split("=", 1)
        set_dotted(data, k.strip(), yaml.safe_load(v))
    cfg = from_dict(BenchConfig, data)
    if getattr(args, "limit", None) is not None:
        apply_limit(cfg, args.limit)
    for m in cfg.methods:
        METHODS.get(m, "methods")
    for t in cfg.tasks + [cfg.train_task]:
        TASKS.get(t, "tasks")
    if getattr(args, "baseline", None) and cfg.baseline not in cfg.methods:  # asked for, would never run
        raise ConfigError(f"--baseline {cfg.baseline}: not among the methods of this run ({', '.join(cfg.methods)}); "
                          f"add it to --methods or choose one of them")
    return cfg


def _number(text: str):
    """'3' -> 3, '1e-3' -> 0.001 (YAML 1.1 reads '1e-3' as a string), anything else as YAML."""
    import yaml

    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def apply_limit(cfg, n: int) -> None:
    """--limit N: caps, never raises, what the config already says; the capped values are the
    frozen config, so a limited run never reuses (or poisons) the full run's cells."""
    if n < 1:
        raise ConfigError(f"--limit: must be >= 1, got {n}")

    def cap(v):
        return n if v is None else min(v, n)

    cfg.eval.max_examples = cap(cfg.eval.max_examples)
    cfg.eval.exposure_prompts = min(cfg.eval.exposure_prompts, n)
    cfg.max_train_examples = cap(cfg.max_train_examples)
    for tc in (cfg.distill, cfg.teacher_sft, cfg.build.teacher_pretrain, cfg.build.student_pretrain):
        tc.steps = min(tc.steps, n)
        tc.warmup_steps = min(tc.warmup_steps, tc.steps)
    for over in cfg.method_train.values():
        if "steps" in over:
            over["steps"] = min(int(over["steps"]), n)
        if "warmup_steps" in over:
            over["warmup_steps"] = min(int(over["warmup_steps"]), n)


def setup_logging(out: Path | None) -> None:
    logger = logging.getLogger("kdbench")
    from .ranks import launched_rank

    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    rank = launched_rank()
    console.setFormatter(logging.Formatter(f"[kdbench{f' rank {rank}' if rank else ''}] %(message)s"))
    logger.addHandler(console)
    if rank:  # several processes: rank 0 logs the run (run.log); the others only their warnings
        logger.setLevel(logging.WARNING)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / "run.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    logger.propagate = False


def _offline_unless_hub(cfg) -> None:
    """Stay offline unless the user named a hub model (nothing reaches the network otherwise)."""
    from .model_sources import available_locally, is_source
    from .models import is_derived, is_preset

    names = [cfg.teacher] + list(cfg.students)
    if all(is_preset(n) or is_derived(n) or (is_source(n) and available_locally(n)) or Path(n).expanduser().exists()
           for n in names):
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(k, "1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if argv and argv[0] == "summarize":
            sp = argparse.ArgumentParser(prog=f"{_prog()} summarize",
                                         description="rebuild leaderboards, plots and report.html from a run folder, "
                                                     "or merge several run folders into one (--out)")
            sp.add_argument("dirs", nargs="+", metavar="DIR", help="benchmark output folder(s) (each holds cells/)")
            sp.add_argument("--out", help="merge the DIRs into this new folder and summarize it there (needed "
                                          "with two or more DIRs)")
            sp.add_argument("--baseline", help="method the delta table compares with (default: sft, if present)")
            sargs = sp.parse_args(argv[1:])
            from .report import summarize

            dirs = [Path(d) for d in sargs.dirs]
            for d in dirs:
                if not (d / "cells").exists():
                    raise ConfigError(f"summarize: '{d}' has no cells/ folder; pass a benchmark output folder")
            if len(dirs) > 1 and not sargs.out:
                raise ConfigError(f"summarize: {len(dirs)} run folders given; merging them needs --out MERGED "
                                  "(a new folder for the merged leaderboard)")
            target = dirs[0]
            if sargs.out:
                from .merge import merge_runs

                target = Path(sargs.out)
                rec = merge_runs(dirs, target)
                print(f"merged {len(rec['cells'])} cells from {len(dirs)} runs into {target} "
                      f"({len(rec['duplicates'])} found in more than one run, used once)")
            summarize(target, baseline=sargs.baseline)
            return 0
        args = build_parser().parse_args(argv)
        if args.list:
            print(list_registered())
            return 0
        cfg = resolve_config(args)
        _offline_unless_hub(cfg)
        out = Path(args.out) if args.out else Path("results") / cfg.preset
        from .runner import Benchmark

        bench = Benchmark(cfg, out, Path(args.cache_dir) if args.cache_dir else None,
                          progress=not args.no_progress and sys.stderr.isatty())
        if args.dry_run:
            setup_logging(None)
            bench.validate(data=False)  # names, configs, models, devices; data is loaded per task below
            report = bench.dry_run()
            print(report.text)
            if report.errors:
                print(f"error: the dry run found {len(report.errors)} problem(s), listed above", file=sys.stderr)
                return 2
            return 0
        bench.validate()  # before creating logs/ folders or doing any work
        setup_logging(out)
        t0 = time.time()
        logging.getLogger("kdbench").info("benchmark '%s' -> %s", cfg.preset, out)
        from .ranks import close

        try:
            bench.run()
        except BaseException:
            close(wait=False)
            raise
        close()  # several processes: all finished, then the process group ends
        logging.getLogger("kdbench").info("finished in %.1fs", time.time() - t0)
        if bench.failures:
            from .ranks import launched_rank

            if launched_rank():  # rank 0 lists them; every rank exits with the same status
                return 1
            print(f"\n{len(bench.failures)} cell(s) failed:", file=sys.stderr)
            for f in bench.failures:
                print(f"  {f['kind']} {f['name']}: {f['error']}", file=sys.stderr)
            return 1
        return 0
    except KdbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished cells and checkpoints are on disk: say how to go on
        print("\ninterrupted: finished cells are kept; run the same command again to resume "
              "(interrupted trainings continue from their last checkpoint)", file=sys.stderr)
        return 130
