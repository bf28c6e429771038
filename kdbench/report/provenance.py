"""Where a report's numbers come from: the code's commit, and in a merged run the source of each row."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .data import Run


def git_commit(run: Run) -> str | None:
    """The run's recorded commit if it has one, else the commit of the code that summarized it."""
    for src in (run.run_info, run.config):
        for k in ("git_commit", "git", "commit"):
            if isinstance(src.get(k), str) and src[k]:
                return src[k]
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        mark = " (with uncommitted changes)" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return f"{head.stdout.strip()}{mark}, the code that summarized this run"
    except (OSError, subprocess.SubprocessError):
        return None


def row_sources(run: Run) -> list[tuple[str | None, str, str, list[str]]]:
    """(student, method, task, runs) per leaderboard row group of a merged run, in display order."""
    out: dict[tuple, list[str]] = {}
    for r in run.rows:
        out.setdefault((r["student"], r["method"], r["task"]), r.get("runs") or [])
    return [(*k, v) for k, v in out.items()]


def sources_markdown(run: Run) -> str:
    """The 'Sources' section of a merged run's leaderboard.md ('' for an ordinary run)."""
    if not run.sources:
        return ""
    lines = ["", "## Sources (merged run)", "", "| run | folder |", "|---|---|"]
    lines += [f"| {s['label']} | `{s['path']}` |" for s in run.sources]
    lines += ["", "| student | method | task | from run(s) |", "|---|---|---|---|"]
    lines += [f"| {s or '-'} | {m} | {t} | {', '.join(runs) or '-'} |" for s, m, t, runs in row_sources(run)]
    return "\n".join(lines) + "\n"
