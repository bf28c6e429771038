"""The `smol` preset end to end: wall time, peak memory and the time of every stage and cell.

    python benchmarks/bench_smol_run.py --data-dir DATA [--methods sft,kd,seqkd,minillm] [--extra "--set k=v"]

Runs `python run_bench.py --preset smol --methods ... --tasks dolly --data-dir DATA` as one process in
a fresh output folder (nothing cached but the converted SmolLM2 weights in the model cache), and
records the machine's load average at the start, the process's wall time and peak RSS (getrusage of
the child), and from the run's own log each stage's and cell's wall time with the process's peak RSS
when it ended (the runner writes both). Goal (issue 17): <= 30 min and <= 6 GB on this 2-core machine.
Results: benchmarks/results/smol_run.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, portable, python, write_results  # noqa: E402

GOAL_S, GOAL_MB = 30 * 60, 6 * 1024
# "stage student-sft: done in 232.0s, peak RSS 4317 MB" / "train .../kd: trained in 290.2s, peak RSS ..."
# / "eval kd on dolly seed 10: done in 58.0s, peak RSS ..."
LINE = re.compile(r"\] (?P<what>(stage \S+|train \S+|eval .+?)): (done|trained) in (?P<s>[\d.]+)s, "
                  r"peak RSS (?P<mb>\d+) MB")


def parse_log(text: str) -> list[dict]:
    return [{"step": m["what"], "wall_s": float(m["s"]), "peak_rss_mb_after": int(m["mb"])}
            for m in LINE.finditer(text)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with dolly/ (MiniLLM's Dolly files)")
    ap.add_argument("--methods", default="sft,kd,seqkd,minillm")
    ap.add_argument("--extra", default="", help="more run_bench.py arguments, e.g. \"--set eval.seeds=[10]\"")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    args = ap.parse_args()
    machine = machine_info()  # the load average at the start
    print("machine:", machine, flush=True)
    out = Path(tempfile.mkdtemp(prefix="kdbench-smol-run-"))
    cmd = [python(), str(ROOT / "run_bench.py"), "--preset", "smol", "--methods", args.methods, "--tasks", "dolly",
           "--data-dir", args.data_dir, "--out", str(out), "--no-progress", *shlex.split(args.extra)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KDBENCH_NO_PROGRESS": "1"}
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    steps = parse_log(p.stderr + p.stdout)
    eval_s = sum(r["wall_s"] for r in steps if r["step"].startswith("eval "))
    train_s = wall - eval_s  # a train cell's time includes the stages it built, so the rows do not add up
    board = (out / "leaderboard.md").read_text() if (out / "leaderboard.md").exists() else ""
    shown = ["python run_bench.py", *cmd[2:]]
    shown[shown.index("--out") + 1] = "<fresh tmp dir>"
    shown[shown.index("--data-dir") + 1] = portable(args.data_dir)
    summary = {"command": " ".join(shown), "returncode": p.returncode, "wall_s": round(wall, 1),
               "peak_rss_mb": round(peak_mb), "outside_evaluation_s": round(train_s, 1),
               "evaluation_s": round(eval_s, 1), "goal_s": GOAL_S, "goal_mb": GOAL_MB,
               "meets_goals": p.returncode == 0 and wall <= GOAL_S and peak_mb <= GOAL_MB}
    if p.returncode != 0:
        summary["stderr_tail"] = p.stderr[-2000:]
    payload = {"machine": machine, "summary": summary, "steps": steps, "leaderboard_md": board}
    notes = (f"`{summary['command']}`: wall {wall / 60:.1f} min, peak RSS {peak_mb / 1024:.2f} GB (goal <= 30 min, "
             f"<= 6 GB: {'met' if summary['meets_goals'] else 'NOT met'}); evaluation {eval_s / 60:.1f} min (the eval "
             f"cells), everything else {train_s / 60:.1f} min. Each row: a stage or cell, its wall time (a train "
             "cell's includes the stages it built: teacher-topk for kd, teacher-samples for seqkd), and the "
             "process's peak RSS when it ended.\n\n" + board)
    write_results("smol_run", payload, steps, ["step", "wall_s", "peak_rss_mb_after"], notes)
    if args.keep:
        print(f"kept {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if p.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
