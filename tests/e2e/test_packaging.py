"""The wheel is the product: built from the source tree, installed (not editable) into a fresh virtual
environment, its `kdbench` console script lists the registry and runs and summarizes a benchmark from a
folder outside the repository.

The fresh environment sees the main environment's dependencies (torch, transformers, ...) through a
`.pth` file holding the main site-packages path. A plain path line in a .pth does not process that
directory's own .pth files, so the main environment's editable kdbench finder never loads: `import
kdbench` must resolve to the wheel's copy, and the test checks that it does.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = ("kdbench", "methods", "tasks")  # pyproject.toml: [tool.setuptools.packages.find] include
# what a wheel must never carry: the environment, run outputs, build leftovers
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "results", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "tmp", "*.pyc")


def source_packages() -> list[str]:
    """Every package folder of the source tree (a folder with an __init__.py), as a posix path."""
    out = []
    for top in PACKAGE_ROOTS:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            if "__pycache__" not in rel.parts:
                out.append(rel.as_posix())
    return out


def source_modules() -> list[str]:
    """Every module file inside those packages (the wheel's .py files)."""
    pkgs = set(source_packages())
    return sorted(p.relative_to(ROOT).as_posix() for top in PACKAGE_ROOTS for p in (ROOT / top).rglob("*.py")
                  if p.parent.relative_to(ROOT).as_posix() in pkgs)


def _run(cmd: list, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["KDBENCH_NO_PROGRESS"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source tree (the build writes build/ and *.egg-info next to
    the sources; a copy keeps the working tree as it was)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist], cwd=tmp)
    wheels = sorted(dist.glob("kdbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed (non-editable) and the main environment's
    dependencies visible; returns its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=env_dir.parent)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / "python"
    # the main environment's pip installs into the new one (--python), before the .pth makes the main
    # environment (and its editable kdbench's metadata) visible there
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=env_dir.parent, env=_clean_env())
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env_dir.parent).stdout.strip())
    (site / "_kdbench_main_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return bindir


def test_wheel_ships_every_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    pkgs = source_packages()
    assert {"kdbench", "kdbench/report", "kdbench/metrics", "methods", "tasks"} <= set(pkgs)
    missing = [p for p in pkgs if f"{p}/__init__.py" not in names]
    assert not missing, f"package folders missing from {wheel.name}: {missing}"
    missing = [m for m in source_modules() if m not in names]
    assert not missing, f"modules missing from {wheel.name}: {missing}"
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "kdbench = kdbench.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert not [n for n in names if n.startswith(("tests/", "results/", "benchmarks/"))]


def test_installed_console_script_runs_a_benchmark(venv, tmp_path):
    work = tmp_path / "elsewhere"  # a working folder outside the repository
    work.mkdir()
    env = _clean_env()
    where = _run([venv / "python", "-c", "import kdbench, methods, tasks; "
                  "print(kdbench.__file__); print(methods.__file__); print(tasks.__file__)"], cwd=work, env=env)
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.parent.resolve()), (
            f"imported from {line}, not from the installed wheel in {venv.parent}")

    listed = _run([venv / "kdbench", "--list"], cwd=work, env=env).stdout
    for section in ("methods:", "tasks:", "metrics:"):
        assert section in listed, listed
    for name in ("sft", "kd", "minillm", "toy", "rouge_l"):
        assert f"  {name} " in listed, name

    out = tmp_path / "ci"
    _run([venv / "kdbench", "--preset", "ci", "--out", out, "--no-progress"], cwd=work, env=env, timeout=600)
    assert (out / "leaderboard.md").exists()
    (out / "leaderboard.md").unlink()  # summarize must write it again
    r = _run([venv / "kdbench", "summarize", out], cwd=work, env=env)
    assert (out / "leaderboard.md").exists()
    assert "| teacher |" in (out / "leaderboard.md").read_text(encoding="utf-8"), r.stdout[-2000:]
    assert not (work / "results").exists() and not list(work.iterdir()), "the run wrote into its working folder"
