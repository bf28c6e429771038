"""Wall time of the default benchmark, `python run_bench.py`, from an empty output folder.

    python benchmarks/bench_default.py                  # default methods, then sft,kd,seqkd,minillm (~20 min)
    python benchmarks/bench_default.py --variants default
    python benchmarks/bench_default.py --quick          # preset ci instead of the default (~1-2 min): a smoke test

Each variant runs as its own process in a fresh --out (so nothing is cached: stage building,
training and evaluation are all in the time), with torch's default threads as a user gets them (--threads N pins N). Reported per variant:
total wall time, the runner's own wall time (run_info.json), the sum of the train and eval cells'
wall times, and the time of the cached stages (pretraining, teacher SFT, teacher samples), against
the goals: 8 minutes for the default run, 10 for the paper's four methods (sft, kd, seqkd, minillm).
Results: benchmarks/results/bench_default.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, python, write_results  # noqa: E402

# goals: the default run (training seeds and converged students, issue 17) in 8 minutes; the paper's four
# methods in 10
GOALS_S = {"default": 480, "paper4": 600}
VARIANTS = {"default": [], "paper4": ["--methods", "sft,kd,seqkd,minillm"]}


def _sum_wall(folder: Path, pattern: str) -> float:
    total = 0.0
    for f in folder.glob(pattern):
        try:
            total += float(json.loads(f.read_text()).get("wall_time_s") or 0)
        except (ValueError, OSError):
            pass
    return round(total, 1)


def run_variant(name: str, extra: list[str], quick: bool, threads: int, keep: bool) -> dict:
    """threads 0: the run exactly as a user types it (the preset's own threads setting, torch's default)."""
    out = Path(tempfile.mkdtemp(prefix=f"kdbench-bench-default-{name}-"))
    pinned = ["--set", f"threads={threads}"] if threads else []
    cmd = [python(), str(ROOT / "run_bench.py"), "--out", str(out), "--no-progress", *pinned,
           *(["--preset", "ci"] if quick else []), *extra]
    env = {**os.environ, "KDBENCH_NO_PROGRESS": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    load0 = list(os.getloadavg())
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    info = {}
    if (out / "run_info.json").exists():
        info = json.loads((out / "run_info.json").read_text())
    shown = ["python run_bench.py", "--out", "<fresh tmp dir>", *cmd[4:]]
    row = {"variant": name, "command": " ".join(shown), "returncode": p.returncode,
           "wall_s": round(wall, 1), "runner_wall_s": info.get("wall_time_s"),
           "train_cells_s": _sum_wall(out / "cells" / "train", "**/result.json"),  # <student>/<method>[/train-seed<s>]
           "stages_s": _sum_wall(out / "cache", "**/DONE"),
           "goal_s": GOALS_S[name], "meets_goal": None if quick else (wall <= GOALS_S[name] and p.returncode == 0),
           "loadavg_start": load0, "loadavg_end": list(os.getloadavg()), "kept": keep}
    if keep:  # on stderr only: results never hold this machine's paths
        print(f"  kept {out}", file=sys.stderr)
    if p.returncode != 0:
        row["stderr_tail"] = p.stderr[-2000:]
    if not keep:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="default,paper4",
                    help=f"comma-separated of {', '.join(VARIANTS)} (default: both)")
    ap.add_argument("--quick", action="store_true", help="use --preset ci: checks the script, not the goal")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads to pin (--set threads=N); 0 (default): as a user runs it, the preset's own")
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    machine = machine_info()
    rows = []
    for name in names:
        print(f"running {name}{' (quick: preset ci)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        rows.append(run_variant(name, VARIANTS[name], args.quick, args.threads, args.keep))
        print(f"  {rows[-1]['wall_s']} s, rc {rows[-1]['returncode']}", file=sys.stderr)
    payload = {"quick": args.quick, "threads": args.threads, "machine": machine, "variants": rows}
    name = "bench_default_quick" if args.quick else "bench_default"
    write_results(name, payload, rows, ["variant", "command", "wall_s", "runner_wall_s", "stages_s", "goal_s",
                                                  "train_cells_s", "meets_goal", "returncode"],
                           notes=f"Goals (goal_s): default {GOALS_S['default']} s, paper4 {GOALS_S['paper4']} s. "
                                 f"Threads: {args.threads or 'the preset default (torch chooses)'}. wall_s = whole process; "
                                 "stages_s = cached stages (tokenizer, pretraining, teacher SFT, teacher samples); "
                                 "train_cells_s = method training; the rest is evaluation, reports, imports."
                                 + (" QUICK run (preset ci): not comparable with the goal." if args.quick else ""),
                           out_dir=Path(args.results))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
