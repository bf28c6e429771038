"""Matmul peak FLOP/s of this machine, and the FLOP/s the teacher SFT stage achieves as a fraction.

    python benchmarks/bench_matmul.py                 # preset ci teacher, 1 torch thread
    python benchmarks/bench_matmul.py --preset tiny --threads 2

Peak: best of several fp32 square matmuls (2 n^3 FLOP each) for a few sizes, at the same thread
count the benchmark trains with. Achieved: the teacher SFT stage of the preset is built in a fresh
cache (after its base-model pretraining, which is timed apart) and counted as 6 * params * tokens
FLOP (forward 2, backward 4 per parameter and token; attention's own FLOP are left out, which at
these sequence lengths is a few percent) over its wall time, where tokens is the `student_tokens`
counter of the stage (every token the trained model reads). The fraction shows how far small-model
training is from the matmul roofline (Python overhead, small matrices, softmax/layernorm/optimizer).
Results: benchmarks/results/bench_matmul.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, python, run_json, write_results  # noqa: E402


def matmul_peak(sizes=(256, 512, 1024, 2048), reps: int = 5) -> list[dict]:
    import torch

    rows = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up: first call pays allocation and kernel selection
        best = float("inf")
        for _ in range(reps):  # best-of: the machine is shared, slow runs are someone else's load
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        rows.append({"n": n, "best_s": best, "gflops": 2 * n ** 3 / best / 1e9})
    return rows


def teacher_sft_worker(run_args: list[str]) -> dict:
    import logging

    from kdbench.cli import build_parser, resolve_config
    from kdbench.io import read_json
    from kdbench.runner import Benchmark

    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(run_args)
    cfg = resolve_config(args)
    bench = Benchmark(cfg, Path(args.out), progress=False)
    path, _ = bench.stages.teacher_model()
    done = read_json(Path(path).parent / "DONE")
    tokens = int(done.get("counters", {}).get("student_tokens", 0))
    params = int(done.get("params", 0))
    wall = float(done["wall_time_s"])
    return {"teacher": cfg.teacher, "params": params, "steps": cfg.teacher_sft.steps,
            "batch_size": cfg.teacher_sft.batch_size, "tokens": tokens, "wall_s": wall,
            "gflops": 6 * params * tokens / wall / 1e9 if wall else None}


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:  # the rest are run_bench.py arguments, untouched by our parser
        print(json.dumps(teacher_sft_worker(sys.argv[2:])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ci")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    machine = machine_info()
    peak_rows = matmul_peak()
    peak = max(r["gflops"] for r in peak_rows)
    out = tempfile.mkdtemp(prefix="kdbench-bench-matmul-")
    env = {"OMP_NUM_THREADS": str(args.threads), "KDBENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    sft = run_json([python(), str(Path(__file__).resolve()), "--worker", "--preset", args.preset, "--out", out,
                    "--set", f"threads={args.threads}"], env)
    sft["fraction_of_peak"] = sft["gflops"] / peak if sft.get("gflops") else None
    rows = [{"what": f"matmul fp32 {r['n']}x{r['n']}", "gflops": r["gflops"]} for r in peak_rows]
    rows.append({"what": f"teacher SFT ({sft['teacher']}, {sft['params']:,} params, {sft['tokens']:,} tokens, "
                         f"{sft['wall_s']:.1f} s)", "gflops": sft["gflops"],
                 "fraction_of_peak": sft["fraction_of_peak"]})
    payload = {"preset": args.preset, "threads": args.threads, "machine": machine, "matmul": peak_rows,
               "peak_gflops": peak, "teacher_sft": sft}
    write_results("bench_matmul", payload, rows, ["what", "gflops", "fraction_of_peak"],
                           notes=f"{args.threads} torch thread(s). Peak = best fp32 matmul; teacher SFT FLOP = "
                                 "6 x params x tokens (attention FLOP not counted).",
                           out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
