"""The whole benchmark on 2 processes (torchrun, gloo, CPU) against 1 process: wall time and the
largest leaderboard difference.

    python benchmarks/bench_ranks.py                       # ci preset, sft,kd,minillm (~5 min)
    python benchmarks/bench_ranks.py --methods sft,kd --keep

Runs, each with a fresh output folder and stage cache:
  1. python run_bench.py --preset ci --methods M --out <tmp>/one
  2. torchrun --standalone --nproc_per_node 2 run_bench.py --preset ci --methods M --out <tmp>/two
Every process gets OMP_NUM_THREADS=1 (the ci preset's threads=1), so 2 processes
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


def same_generations(a: Path, b: Path) -> tuple[int, int]:
    cells = sorted(p.relative_to(a) for p in a.glob("cells/eval/**/generations.jsonl"))
    same = sum((a / c).read_bytes() == (b / c).read_bytes() for c in cells if (b / c).exists())
    return same, len(cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--methods", default="sft,kd,minillm")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = ap.parse_args(argv)
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ranks_"))
    common = ["run_bench.py", "--preset", args.preset, "--methods", args.methods, "--no-progress"]
    one, two = tmp / "one", tmp / "two"
    wall_one = _timed([python(), *common, "--out", str(one)], tmp / "one.log")
    wall_two = _timed([python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
                       "--out", str(two)], tmp / "two.log")
    diff = max_diff(one, two)
    gens = same_generations(one, two)
    rows = [{"processes": 1, "wall_s": round(wall_one, 1)},
            {"processes": 2, "wall_s": round(wall_two, 1), "speedup": round(wall_one / wall_two, 2)}]
    payload = {"machine": machine, "preset": args.preset, "methods": args.methods, "wall_s_1": wall_one,
               "wall_s_2": wall_two, "max_abs_diff_by_row": diff, "generations_identical": list(gens),
               "commands": {"1": " ".join([python(), *common, "--out", "DIR"]),
                            "2": " ".join(["torchrun --standalone --nproc_per_node 2", *common, "--out", "DIR"])}}
    by_row = ", ".join(f"{m} {d:.3g}" for m, d in diff.items())
    notes = (f"`{args.preset}` preset, methods {args.methods}, fresh output folder and stage cache for each run, "
             f"OMP_NUM_THREADS=1 per process. Largest |difference| of any mean or CI bound, per row: {by_row} "
             f"(rows {', '.join(REFERENCE_ROWS)} are built by rank 0 alone and must be 0). Eval generations "
             f"identical in {gens[0]} of {gens[1]} cells.")
    write_results("bench_ranks", payload, rows, ["processes", "wall_s", "speedup"], notes)
    if args.keep:
        print(f"run folders: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
