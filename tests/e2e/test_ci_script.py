"""`.ci/run` stays a valid script that runs exactly the README's test command, and the test extra
carries what the otherwise-skipped tests need (gguf)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"this is what CI runs\):\s*```bash\n(.*?)\n```", text, re.S)
    assert m, "README.md lost its 'this is what CI runs' block"
    return m.group(1).strip()


def test_ci_script_parses_and_runs_the_readme_test_command_last():
    script = ROOT / ".ci" / "run"
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = [ln.strip() for ln in script.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert lines[-1] == readme_test_command()


def test_test_extra_installs_gguf():
    m = re.search(r"^test = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M)  # no tomllib on 3.10
    assert m and '"gguf' in m.group(1)
