"""Toy-world design sweep (issue 14): run `run_bench.py` with --set overrides and summarise.

    python benchmarks/sweep_world.py NAME [--seeds 1,2,3] [--repo DIR] -- --set key=value ...

Runs one benchmark per training seed (`--set distill.seed=S`, out /tmp/sweep/NAME-sS, one at a
time, teacher shared through --cache-dir /tmp/kdcache) and prints, per model: validity (mean over
eval seeds; then mean and std over training seeds), cls_acc, ece, dist4, exposure_bias, mode
coverage and validity by family, plus the stage times from run.log. Results are appended to
/tmp/sweep/results.jsonl. `--repo` runs another checkout's run_bench.py (a snapshot of HEAD plus
the world under test keeps concurrent edits of the engine out of the measurement).
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
