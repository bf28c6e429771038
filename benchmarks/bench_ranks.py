"""The whole benchmark on 2 processes (torchrun, gloo, CPU) against 1 process: wall time and the
largest leaderboard difference.

    python benchmarks/bench_ranks.py                       # ci preset, sft,kd,minillm, 2 rounds (~5 min)
    python benchmarks/bench_ranks.py --methods sft,kd --rounds 1 --keep

Runs, alternating for --rounds rounds (the machine is shared: the load average is printed), each with
a fresh output folder and stage cache:
  1. python run_bench.py --preset ci --methods M --out <tmp>/one-R
  2. torchrun --standalone --nproc_per_node 2 run_bench.py --preset ci --methods M --out <tmp>/two-R
and reads from each run folder where its time went (stages, train cells, eval cells: the wall times
rank 0 recorded). Every process gets OMP_NUM_THREADS=1 (the ci preset's threads=1), so 2 processes
use 2 cores where 1 process uses one. Writes benchmarks/results/bench_ranks.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, python, write_results  # noqa: E402

REFERENCE_ROWS = ("teacher", "student-base", "sft")  # built by rank 0 alone


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KDBENCH_NO_PROGRESS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _timed(cmd: list[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}); log: {log}\n{log.read_text()[-3000:]}")
    return wall


def _rows(out: Path) -> dict:
    return {(r["student"], r["method"], r["task"], r["metric"]): r
            for r in json.loads((out / "leaderboard.json").read_text())}


def max_diff(a: Path, b: Path) -> dict[str, float]:
    """Per method row: the largest |difference| of any mean or CI bound between two leaderboards."""
    ra, rb = _rows(a), _rows(b)
    if ra.keys() != rb.keys():
        raise SystemExit(f"the leaderboards have different rows: {sorted(set(ra) ^ set(rb))}")
    out: dict[str, float] = {}
    for k, x in ra.items():
        for f in ("mean", "ci_low", "ci_high"):
            u, v = x[f], rb[k][f]
            d = 0.0 if u == v else (float("inf") if u is None or v is None else abs(u - v))
            out[k[1]] = max(out.get(k[1], 0.0), d)
    return out


def breakdown(out: Path) -> dict[str, float]:
    """Seconds rank 0 recorded: stages (built by rank 0 alone), train cells, eval cells, the run."""
    def total(paths) -> float:
        return round(sum(float(json.loads(p.read_text()).get("wall_time_s") or 0) for p in paths), 1)

    return {"stages_s": total((out / "cache").glob("*/DONE")),
            "train_cells_s": total((out / "cells" / "train").glob("*/*/result.json")),
            "eval_cells_s": total((out / "cells" / "eval").glob("**/metrics.json")),
            "run_s": float(json.loads((out / "run_info.json").read_text())["wall_time_s"])}


def same_generations(a: Path, b: Path) -> tuple[int, int]:
    cells = sorted(p.relative_to(a) for p in a.glob("cells/eval/**/generations.jsonl"))
    same = sum((a / c).read_bytes() == (b / c).read_bytes() for c in cells if (b / c).exists())
    return same, len(cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--methods", default="sft,kd,minillm")
    ap.add_argument("--rounds", type=int, default=2, help="alternating 1- and 2-process runs (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = ap.parse_args(argv)
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ranks_"))
    common = ["run_bench.py", "--preset", args.preset, "--methods", args.methods, "--no-progress"]
    rows, diff, gens = [], {}, [0, 0]
    for r in range(args.rounds):
        one, two = tmp / f"one-{r}", tmp / f"two-{r}"
        wall_one = _timed([python(), *common, "--out", str(one)], tmp / f"one-{r}.log")
        wall_two = _timed([python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
                           "--out", str(two)], tmp / f"two-{r}.log")
        for m, d in max_diff(one, two).items():
            diff[m] = max(diff.get(m, 0.0), d)
        g = same_generations(one, two)
        gens = [gens[0] + g[0], gens[1] + g[1]]
        rows += [{"round": r + 1, "processes": 1, "wall_s": round(wall_one, 1), **breakdown(one)},
                 {"round": r + 1, "processes": 2, "wall_s": round(wall_two, 1), **breakdown(two),
                  "speedup": round(wall_one / wall_two, 2)}]
    best = {n: min(x["wall_s"] for x in rows if x["processes"] == n) for n in (1, 2)}
    payload = {"machine": machine, "preset": args.preset, "methods": args.methods, "runs": rows,
               "best_wall_s": best, "max_abs_diff_by_row": diff, "generations_identical": gens,
               "commands": {"1": " ".join(["python", *common, "--out", "DIR"]),
                            "2": " ".join(["torchrun --standalone --nproc_per_node 2", *common, "--out", "DIR"])}}
    by_row = ", ".join(f"{m} {d:.3g}" for m, d in diff.items())
    notes = (f"`{args.preset}` preset, methods {args.methods}, fresh output folder and stage cache for each run, "
             f"OMP_NUM_THREADS=1 per process. Largest |difference| of any mean or CI bound, per row: {by_row} "
             f"(rows {', '.join(REFERENCE_ROWS)} are built by rank 0 alone and must be 0). Eval generations "
             f"identical in {gens[0]} of {gens[1]} cells. Fastest: 1 process {best[1]} s, 2 processes {best[2]} s. "
             "wall_s is the whole command (for 2: torchrun's start and rendezvous included); the other times are "
             "what rank 0 recorded (stages: built by rank 0 alone).")
    write_results("bench_ranks", payload, rows, ["round", "processes", "wall_s", "stages_s", "train_cells_s",
                                                 "eval_cells_s", "run_s", "speedup"], notes)
    if args.keep:
        print(f"run folders: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
