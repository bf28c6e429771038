"""Paired comparison of any two leaderboard rows of a finished run, reference rows included.

summarize compares distilled students with each other; a reference row (the untrained student base,
the teacher) gets a CI but no paired delta. This prints delta = A - B with the same paired
hierarchical bootstrap (kdbench.stats.paired_comparison), e.g. whether a cross-tokenizer uld student
beats its untrained base:

    python benchmarks/compare_rows.py results/xtok uld student-base --metrics validity,rouge_l
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdbench.report.data import load_run  # noqa: E402
from kdbench.report.scores import frames_by_model, load_columns, model_key  # noqa: E402
from kdbench.stats.core import paired_comparison  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("a", help="method (row) A, e.g. uld")
    p.add_argument("b", help="method (row) B, e.g. student-base")
    p.add_argument("--metrics", default="validity")
    p.add_argument("--student", default=None, help="student label (default: the run's first)")
    p.add_argument("--resamples", type=int, default=2000)
    args = p.parse_args(argv)
    run = load_run(args.run)
    student = args.student or run.students[0]
    cols = load_columns(run)
    for (task, metric), col in cols.items():
        if metric not in args.metrics.split(","):
            continue
        frames = frames_by_model(col)
        ka, kb = model_key(student, args.a), model_key(student, args.b)
        if ka not in frames or kb not in frames:
            print(f"{task}/{metric}: no scores for {ka if ka not in frames else kb}")
            continue
        r = paired_comparison(frames[ka], frames[kb], col.statistic, n_resamples=args.resamples)
        print(f"{task}/{metric} [{student}]: {args.a} - {args.b} = {r['delta']:.2f} "
              f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] (95% CI), p = {r['p_value']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
