"""Toy-world design sweep (issue 14): run `run_bench.py` with --set overrides and summarise.

    python benchmarks/sweep_world.py NAME [--seeds 1,2,3] [--repo DIR] -- --set key=value ...

Runs one benchmark per training seed (`--set distill.seed=S`, out /tmp/sweep/NAME-sS, one at a
time, teacher shared through --cache-dir /tmp/kdcache) and prints, per model: validity (mean over
eval seeds; then mean and std over training seeds), cls_acc, ece, dist4, exposure_bias, mode
coverage and validity by family, plus the stage times from run.log. Results are appended to
/tmp/sweep/results.jsonl. `--repo` runs another checkout's run_bench.py (a snapshot of HEAD plus
the world under test keeps concurrent edits of the engine out of the measurement).

Sweep of 2026-12-01 (issue 14; 2-core VM shared with other jobs; --set threads=1; 3 eval seeds;
one training seed unless said; validity, by family in brackets):
  e1  world v2 draft (16 creatures, yes/no on every attribute, 720 test prompts), old teacher
      (600 pretrain + 1800 SFT steps), student gpt2-toy-s 1500 steps: teacher 84.5 (yes/no 76,
      held-out describe 60, fact 87; cls_acc 89.8); sft 65.4 / kd 64.5; fact 38.5 / 18.3, but from
      6 distinct held-out prompts -> distinct eval prompts, more creatures.
  e3  40 creatures, teacher 800 + 800: teacher 71.2 (yes/no 48.6, cls_acc 50; reverse 53, sort 76).
  e4  24 creatures, choose with 10 categories x 4 modes (+ two-item prompts), yes/no 30% of every
      split, teacher 600 + 1500: teacher 78.0 (cls_acc 92.1; held-out describe 34.5, sort 50,
      two-item choose 83: duplicates). xs: sft 37.8 / kd 38.4 (choose 52.8 / 69.8);
      s: sft 65.2 / kd 64.6 (choose 81.7 / 85.7, sort 84.1 / 69.4).
  e5  final world (describe in-distribution, one-item choose, lists of 2-3), teacher 600 + 1800:
      teacher 93.9 (cls_acc 91.7, ECE 0.05; sort 83, yes/no 88, others 98-100).
      xs 1000 steps lr 3e-3, 3 training seeds: sft 47.0 +- 1.0 / kd 47.3 +- 1.0 (choose 71-75 / 85-91,
      mode coverage 69 / 76): far from converged.
      xs 2000 steps: sft 78.9 / kd 80.0; 3000 steps: sft 82.9 / kd 81.3 (sort 95.6 / 90.1: kd copies
      the teacher's sort errors; fact 82.1 / 71.0).
      final tiny preset (xs, 2000 steps), 3 training seeds: sft 78.26 +- 0.56 / kd 78.12 +- 1.95
      (cls_acc 54.5 / 53.1, ExAccErr 28.7 +- 15.1 / 19.5 +- 6.5, Dist-4 99.99 / 99.98).
      Default run `python run_bench.py` (2 threads, one training seed): 202 s wall (teacher 129 s,
      sft 11 s, kd 41 s, eval 16 s); teacher 97.0 validity, cls_acc 96.8; sft 78.3, kd 76.9.
  e7  (before the engine used the unlabeled split; emulated by patching seqkd's data, 2000 steps):
      SFT on gold + teacher labels on the 1000 unlabeled prompts: 79.6 overall vs sft 78.9;
      held-out facts 96.8 vs 71.0 (describe 88.9 vs 94.4, sort 76.6 vs 81.7). The engine now gives
      those prompts to every teacher-guided method (config use_unlabeled; `--set use_unlabeled=false`
      is the world without them); the default run's CIs are in README.md.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("validity", "cls_acc", "ece", "dist4", "exposure_bias", "mode_coverage")


def summarise(out: Path) -> dict:
    rows: dict[str, dict] = {}
    for f in sorted(out.glob("cells/eval/*/*/toy/seed*/metrics.json")):
        d = json.loads(f.read_text())
        key = f"{d['group']}/{d['model']}"
        r = rows.setdefault(key, {m: [] for m in METRICS} | {"by_family": []})
        for m in METRICS:
            if m in d["metrics"]:
                r[m].append(d["metrics"][m])
        r["by_family"].append(d["artifacts"].get("validity_by_family", {}))
        r["n_examples"] = d["n_examples"]
    res = {}
    for key, r in rows.items():
        fam = {}
        for bf in r["by_family"]:
            for k, v in bf.items():
                fam.setdefault(k, []).append(v)
        res[key] = {m: (st.mean(v), st.pstdev(v)) for m, v in r.items() if m in METRICS and v}
        res[key]["by_family"] = {k: round(st.mean(v), 1) for k, v in fam.items()}
        res[key]["n_examples"] = r["n_examples"]
    times = {}
    log = (out / "run.log").read_text() if (out / "run.log").exists() else ""
    for m in re.finditer(r"stage (\S+): done in ([\d.]+)s", log):
        times[m.group(1)] = float(m.group(2))
    for m in re.finditer(r"train (\S+): done in ([\d.]+)s", log):
        times["train " + m.group(1)] = float(m.group(2))
    m = re.search(r"finished in ([\d.]+)s", log)
    times["total"] = float(m.group(1)) if m else None
    return {"models": res, "times": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--cache-dir", default="/tmp/kdcache")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    rest = argv[cut + 1:]
    root = Path("/tmp/sweep")
    root.mkdir(exist_ok=True)
    per_seed = {}
    for s in [int(x) for x in a.seeds.split(",")]:
        out = root / f"{a.name}-s{s}"
        cmd = [sys.executable, "run_bench.py", "--out", str(out), "--no-progress", "--cache-dir", a.cache_dir,
               "--set", f"distill.seed={s}", *rest]
        t0 = time.time()
        p = subprocess.run(cmd, cwd=a.repo, capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-3000:])
            sys.exit(p.returncode)
        per_seed[s] = summarise(out) | {"wall_s": round(wall, 1)}
    # across training seeds: mean and std of each model's eval-seed mean
    models = sorted({k for r in per_seed.values() for k in r["models"]})
    print(f"== {a.name}  {' '.join(rest)}")
    for k in models:
        line = [f"{k:32s}"]
        for m in METRICS:
            vals = [r["models"][k][m][0] for r in per_seed.values() if m in r["models"].get(k, {})]
            evs = [r["models"][k][m][1] for r in per_seed.values() if m in r["models"].get(k, {})]
            if vals:
                sd = st.pstdev(vals) if len(vals) > 1 else 0.0
                line.append(f"{m} {st.mean(vals):6.2f} ±{sd:4.2f} (ev ±{st.mean(evs):.2f})")
        print("  ".join(line))
        fam = [r["models"][k]["by_family"] for r in per_seed.values() if k in r["models"]]
        print(" " * 34, {f: round(st.mean(x[f] for x in fam if f in x), 1) for f in sorted(fam[0])})
    for s, r in per_seed.items():
        print(f"seed {s}: wall {r['wall_s']} s; stages {r['times']}")
    with open(root / "results.jsonl", "a") as f:
        f.write(json.dumps({"name": a.name, "args": rest, "per_seed": per_seed}) + "\n")


if __name__ == "__main__":
    main()
