"""Kill `run_bench.py --preset ci` with SIGKILL at five moments, rerun it, and check that every rerun
finishes with exactly the results of an uninterrupted run.

    python benchmarks/kill_resume.py            # about 5-10 minutes on 2 CPU cores
    python benchmarks/kill_resume.py --keep     # keep the run folders (printed at the end)
    python benchmarks/kill_resume.py --nproc 2  # every run under torchrun, 2 processes (gloo)

Each scenario uses its own --out (and so its own stage cache, <out>/cache): nothing is shared with
the uninterrupted reference, so every stage the killed run had not finished is really rebuilt or
resumed. The kill comes from outside (this script watches the run's files and sends SIGKILL), so
the process gets no chance to clean up: its lock file stays behind and the rerun must take it over.

For every rerun the script checks:
  - leaderboard.json is byte-identical to the reference's;
  - every eval cell's metrics (full precision, metrics.json) equal the reference's;
  - every trained model's weights (model.safetensors) are byte-identical to the reference's;
  - stages and cells finished before the kill were not recomputed (their DONE markers are the
    same files, untouched), and interrupted trainings resumed from their checkpoints.
Exit status 0 when all five reruns match, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


NPROC = [1]  # processes per run (--nproc): several run under torchrun


def bench_cmd(out: Path, threads: int) -> list[str]:
    launch = [sys.executable] if NPROC[0] == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(NPROC[0])]
    return [*launch, str(ROOT / "run_bench.py"), "--preset", "ci", "--out", str(out), "--no-progress",
            "--set", f"threads={threads}"]


def bench_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), KDBENCH_NO_PROGRESS="1",
               TOKENIZERS_PARALLELISM="false")
    return env


# -- kill moments: a predicate over the run folder, polled while the run goes ------------------------

class CheckpointWrites:
    """True once checkpoint files matching `pattern` were (re)written `n` times. Checkpoints are
    replaced atomically, so every write is a new inode."""

    def __init__(self, pattern: str, n: int):
        self.pattern, self.n, self.seen = pattern, n, set()

    def __call__(self, out: Path) -> bool:
        for p in out.glob(self.pattern):
            try:
                self.seen.add((str(p), p.stat().st_ino))
            except FileNotFoundError:
                pass
        return len(self.seen) >= self.n


def eval_cells_done(n: int) -> Callable[[Path], bool]:
    return lambda out: len(list(out.glob("cells/eval/*/*/*/seed*/DONE"))) >= n


def exists(pattern: str) -> Callable[[Path], bool]:
    return lambda out: any(out.glob(pattern))


@dataclass
class Scenario:
    name: str
    trigger: Callable[[Path], bool]


SCENARIOS = [
    Scenario("teacher pretraining, 1st checkpoint (stage in .partial)",
             CheckpointWrites("cache/.teacher-base-*.partial/checkpoint.pt", 1)),
    Scenario("teacher SFT, 3rd checkpoint (stage in .partial)",
             CheckpointWrites("cache/.teacher-sft-*.partial/checkpoint.pt", 3)),
    Scenario("kd train cell, mid-training (1st checkpoint)",
             CheckpointWrites("cells/train/*/kd/checkpoint.pt", 1)),
    Scenario("evaluation, after 3 of 8 eval cells", eval_cells_done(3)),
    Scenario("report: summarize writing tables/plots", exists("run_info.json")),
]


# -- comparing a run with the reference ----------------------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eval_metrics(out: Path) -> dict[str, dict]:
    res = {}
    for p in sorted(out.glob("cells/eval/*/*/*/seed*/metrics.json")):
        res[str(p.relative_to(out).parent)] = json.loads(p.read_text())["metrics"]
    return res


def weights(out: Path) -> dict[str, str]:
    """sha256 of every trained model: cached stages (cache folders are named by config hash, so
    they match across runs) and train cells."""
    res = {}
    for p in sorted(out.glob("cache/*/model/model.safetensors")) + sorted(out.glob("cells/train/*/*/model/model.safetensors")):
        res[str(p.relative_to(out))] = sha(p)
    return res


def done_markers(out: Path) -> dict[str, tuple[int, int]]:
    res = {}
    for p in list(out.glob("cache/*/DONE")) + list(out.glob("cells/**/DONE")):
        st = p.stat()
        res[str(p.relative_to(out))] = (st.st_ino, st.st_mtime_ns)
    return res


def state_at_kill(out: Path) -> str:
    stages = sorted(p.parent.name.rsplit("-", 1)[0] for p in out.glob("cache/*/DONE"))
    partial = sorted(p.name[1:].rsplit("-", 1)[0] for p in out.glob("cache/.*.partial"))
    cells = len(list(out.glob("cells/eval/*/*/*/seed*/DONE")))
    trains = sorted(p.parent.name for p in out.glob("cells/train/*/*/DONE"))
    bits = [f"stages done: {', '.join(s for s in stages if s != 'tokenizer') or '-'}"]
    if partial:
        bits.append(f"partial: {', '.join(partial)}")
    bits.append(f"train cells done: {', '.join(trains) or '-'}")
    bits.append(f"eval cells done: {cells}/8")
    return "; ".join(bits)


@dataclass
class Outcome:
    scenario: str
    killed: bool
    at_kill: str = ""
    lock_left: bool = False
    rerun_rc: int | None = None
    resumed: list[str] = field(default_factory=list)
    reused: str = ""
    leaderboard: bool = False
    metrics: bool = False
    weights: bool = False
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return (self.killed and self.rerun_rc == 0 and self.leaderboard and self.metrics and self.weights
                and not self.note)


def run_to_end(out: Path, threads: int, log: Path) -> int:
    with open(log, "w") as f:
        return subprocess.run(bench_cmd(out, threads), env=bench_env(threads), stdout=f, stderr=subprocess.STDOUT,
                              cwd=ROOT).returncode


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def run_and_kill(out: Path, threads: int, trigger: Callable[[Path], bool], log: Path, poll: float) -> bool:
    """Start the benchmark, SIGKILL it when `trigger(out)` holds; False if it finished first."""
    with open(log, "w") as f:
        proc = subprocess.Popen(bench_cmd(out, threads), env=bench_env(threads), stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        while proc.poll() is None:
            if out.exists() and trigger(out):
                # the launcher and every rank at once, as a crash would (torchrun starts each rank
                # in its own session, so a process group would miss them)
                for pid in process_tree(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
                return True
            time.sleep(poll)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the runs (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between looks at the run folder")
    ap.add_argument("--only", type=int, nargs="*", help="scenario numbers to run (1-5; default all)")
    ap.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun; default 1)")
    args = ap.parse_args()
    NPROC[0] = args.nproc
    print(f"load average at the start: {list(os.getloadavg())}; {args.nproc} process(es) per run", flush=True)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kdbench-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.time()
    print(f"reference: uninterrupted run into {ref} ...", flush=True)
    rc = run_to_end(ref, args.threads, work / "reference.log")
    if rc != 0:
        print(f"the uninterrupted reference run failed (exit {rc}); see {work / 'reference.log'}")
        return 1
    print(f"reference done in {time.time() - t0:.0f}s", flush=True)
    ref_board = (ref / "leaderboard.json").read_bytes()
    ref_metrics, ref_weights = eval_metrics(ref), weights(ref)

    outcomes: list[Outcome] = []
    for i, sc in enumerate(SCENARIOS, 1):
        if args.only and i not in args.only:
            continue
        out = work / f"kill{i}"
        shutil.rmtree(out, ignore_errors=True)
        t1 = time.time()
        print(f"[{i}] {sc.name}: run, kill ...", flush=True)
        o = Outcome(sc.name, run_and_kill(out, args.threads, sc.trigger, work / f"kill{i}.log", args.poll))
        if not o.killed:
            o.note = "the run finished before the kill moment"
            outcomes.append(o)
            continue
        o.at_kill = state_at_kill(out)
        o.lock_left = (out / ".kdbench.lock").exists()
        before = done_markers(out)
        print(f"[{i}]   killed ({o.at_kill}); rerun ...", flush=True)
        o.rerun_rc = run_to_end(out, args.threads, work / f"rerun{i}.log")
        text = (work / f"rerun{i}.log").read_text(errors="replace")
        o.resumed = re.findall(r"\] (.+?): resumed from step (\d+)", text)
        after = done_markers(out)
        untouched = sum(1 for k, v in before.items() if after.get(k) == v)
        o.reused = f"{untouched}/{len(before)}"
        if untouched != len(before):
            o.note = "a finished stage or cell was recomputed"
        if o.rerun_rc == 0:
            o.leaderboard = (out / "leaderboard.json").read_bytes() == ref_board
            o.metrics = eval_metrics(out) == ref_metrics
            o.weights = weights(out) == ref_weights
        o.seconds = time.time() - t1
        outcomes.append(o)
        print(f"[{i}]   rerun exit {o.rerun_rc}; leaderboard identical: {o.leaderboard}", flush=True)

    def yes(b: bool) -> str:
        return "identical" if b else "DIFFERENT"

    print()
    print("| # | killed at | state at the kill | rerun exit | resumed from checkpoint | finished work reused "
          "| leaderboard.json | eval metrics | model weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, o in enumerate(outcomes, 1):
        if not o.killed:
            print(f"| {i} | {o.scenario} | {o.note} | - | - | - | - | - | - |")
            continue
        resumed = ", ".join(f"{d} @ step {s}" for d, s in o.resumed) or "none"
        lock = " (stale lock taken over)" if o.lock_left else ""
        print(f"| {i} | {o.scenario} | {o.at_kill} | {o.rerun_rc}{lock} | {resumed} | {o.reused} DONE markers "
              f"untouched | {yes(o.leaderboard)} | {yes(o.metrics)} | {yes(o.weights)} |")
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        if o.note:
            print(f"note: {o.scenario}: {o.note}")
    keep = args.keep or bool(bad) or bool(args.work)  # failures keep their logs for a look
    print(f"\n{len(outcomes) - len(bad)}/{len(outcomes)} reruns identical to the uninterrupted run "
          f"(total {time.time() - t0:.0f}s{f'; runs and logs in {work}' if keep else ''})")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
