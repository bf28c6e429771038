"""Shared by the benchmark scripts: machine description and JSON + Markdown output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine_info() -> dict:
    """Enough to tell two machines apart; the load average says how busy the shared box was."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(name: str, payload: dict, table_rows: list[dict], columns: list[str], notes: str = "",
                  out_dir: Path | None = None) -> tuple[Path, Path]:
    """benchmarks/results/<name>.json (everything) and <name>.md (a table + notes); prints the table."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table_rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    m = payload.get("machine", {})
    lines += ["", f"Machine: {m.get('cpu', '?')}, {m.get('logical_cpus', '?')} logical CPUs, "
                  f"torch {m.get('torch', '?')}, load average {m.get('loadavg_1_5_15', '?')} at the start.", ""]
    if notes:
        lines += [notes, ""]
    mp.write_text("\n".join(lines))
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")
    return jp, mp


def ratio_ci(per_round: list[float]) -> list[float]:
    """Geometric mean of per-round ratios with a 95% t-interval on their logs (rounds are the units)."""
    import math
    import statistics

    from scipy import stats

    logs = [math.log(r) for r in per_round]
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return [math.exp(m)] * 3
    h = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return [math.exp(m), math.exp(m - h), math.exp(m + h)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def run_json(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a worker that prints one JSON object as its last stdout line."""
    p = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def python() -> str:
    return sys.executable


def portable(path) -> str | None:
    """A path as results record it: relative to the repository (../shared/data), never this machine's
    absolute path, so a results file reads the same on every machine."""
    return None if path is None else os.path.relpath(Path(path).resolve(), ROOT)
