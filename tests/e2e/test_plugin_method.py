"""A new KD method is one new file: drop it into methods/, and --list, a benchmark run and the
leaderboard pick it up, with nothing else in the repository edited or written.

The repository here is a snapshot of the working tree (tracked and untracked, not ignored files) in a
temporary git repository, so `git status` sees only what this test and its run did: other people
editing the real working tree at the same time neither show up in the check nor see the probe method
in their own runs. With bytecode writing off, the run must leave not even an ignored file behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.layout import BASE, TEACHER, RunLayout

ROOT = Path(__file__).resolve().parents[2]
NAME = "plugin-probe"
PROBE_FILE = f"methods/zz_plugin_probe_{os.getpid()}.py"

# The whole method, written against `kdbench.method` alone (as methods/kd.py is).
PROBE_SOURCE = f'''"""{NAME}: forward KL to the teacher on gold responses plus a little CE (written by a test)."""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import METHODS, LossOutput, Method, MethodConfig, MethodContext, cross_entropy, forward_kl


@dataclass
class ProbeConfig(MethodConfig):
    ce_weight: float = 0.1


@METHODS.register("{NAME}")
class Probe(Method):
    description = "test probe: forward KL to the teacher on gold responses + 0.1 CE"
    Config = ProbeConfig
    requires_teacher = True

    def train(self, ctx: MethodContext) -> None:
        def loss_fn(batch):
            s = ctx.logits(ctx.student, batch)
            kl = forward_kl(s, ctx.teacher_logits(batch), batch.loss_mask)
            return LossOutput(kl + self.config.ce_weight * cross_entropy(s, batch.labels), {{"fkl": float(kl.detach())}})

        ctx.fit(loss_fn, ctx.gold_batches())
'''


def _git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(repo), "-c", "user.name=kdbench-test", "-c", "user.email=test@kdbench",
                        "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout


def _status(repo: Path) -> list[str]:
    return sorted(_git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all").splitlines())


@pytest.fixture
def repo(tmp_path) -> Path:
    """The working tree's source files in a fresh git repository with one commit."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    files = _git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    dst = tmp_path / "repo"
    for rel in filter(None, dict.fromkeys(files)):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is not part of it
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-q", "-m", "snapshot")
    assert _status(dst) == []
    return dst


def _run(cmd: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONDONTWRITEBYTECODE="1", KDBENCH_NO_PROGRESS="1")
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_a_method_file_is_all_it_takes(repo, tmp_path):
    where = _run([sys.executable, "-c", "import kdbench, methods; print(kdbench.__file__); print(methods.__file__)"],
                 cwd=repo).stdout.split()
    assert all(Path(p).resolve().is_relative_to(repo.resolve()) for p in where), where  # the snapshot's code runs

    probe = repo / PROBE_FILE
    out = tmp_path / "run"
    try:
        probe.write_text(PROBE_SOURCE, encoding="utf-8")
        listed = _run([sys.executable, "run_bench.py", "--list"], cwd=repo).stdout
        assert f"  {NAME} " in listed and "test probe" in listed, listed
        _run([sys.executable, "run_bench.py", "--preset", "ci", "--methods", f"sft,{NAME}", "--out", out,
              "--no-progress"], cwd=repo)
        assert _status(repo) == [f"?? {PROBE_FILE}"], "the run changed or wrote files in the repository"
    finally:
        probe.unlink(missing_ok=True)
    assert _status(repo) == []

    rows = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    mine = [r for r in rows if r["method"] == NAME]
    assert mine, sorted({r["method"] for r in rows})
    assert {r["metric"] for r in mine} >= {"validity", "rouge_l"}
    assert all(math.isfinite(r["mean"]) and math.isfinite(r["std"]) and r["n_seeds"] == 2 for r in mine), mine
    assert {r["method"] for r in rows} == {TEACHER, BASE, "sft", NAME}

    student = json.loads((out / "config.json").read_text(encoding="utf-8"))["students"][0]
    cell = RunLayout(out).train_cell(student, NAME)
    assert (cell / "DONE").exists() and (cell / "model").is_dir(), sorted(p.name for p in cell.parent.iterdir())
    result = json.loads((cell / "result.json").read_text(encoding="utf-8"))
    assert result["method"] == NAME and result["student"] == student
    history = json.loads((cell / "history.json").read_text(encoding="utf-8"))
    assert history and "fkl" in json.dumps(history)  # the method's own loss parts reached the history
    assert NAME in (out / "leaderboard.md").read_text(encoding="utf-8")
