"""summarize(): tables, delta, cost, plots, report.html and identical rebuilds, from synthetic cells.

The run folders are written by hand (no training): two students of known size, a teacher, sft/kd/
minillm plus a method whose training failed, two tasks, three seeds, one eval seed that failed and
one (student, method, task) whose every seed failed, and every artifact the plots read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from kdbench.errors import ConfigError
from kdbench.report import check_tex_shape, load_run, summarize

SEEDS = [10, 20, 30]
STUDENTS = {"gpt2-toy-s": 96_000, "gpt2-toy-xs": 18_000}
FAMILIES = ["fact", "choose", "yesno"]

# Base scores per model on toy/validity; the other values are derived from it, so the expected
# bold / star / delta cells are known: minillm on gpt2-toy-s beats the teacher (70).
VALIDITY = {("gpt2-toy-s", "student-base"): 10.0, ("gpt2-toy-s", "sft"): 50.0, ("gpt2-toy-s", "kd"): 55.0,
            ("gpt2-toy-s", "minillm"): 75.0, ("gpt2-toy-xs", "student-base"): 5.0, ("gpt2-toy-xs", "sft"): 30.0,
            ("gpt2-toy-xs", "kd"): 40.0, ("gpt2-toy-xs", "minillm"): 35.0, (None, "teacher"): 70.0}


def _write(p: Path, obj) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1) if not isinstance(obj, str) else obj, encoding="utf-8")


def _fake_safetensors(folder: Path, n_params: int) -> None:
    """A header-only safetensors file: summarize reads parameter counts from the header alone."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_params], "data_offsets": [0, 4 * n_params]}}).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def _eval_cell(out: Path, group: str, model: str, task: str, seed: int, base: float, artifacts: bool) -> None:
    cell = out / "cells" / "eval" / group / model / task / f"seed{seed}"
    jitter = (seed - 20) / 10.0  # -1, 0, +1: std over the three seeds is exactly 1 x scale
    if task == "toy":
        metrics = {"validity": base + jitter, "mode_coverage": 100 - base + 2 * jitter, "judge": base + 5 + jitter}
        arts = {"validity_by_family": {f: min(100.0, base + 10 * i) for i, f in enumerate(FAMILIES)},
                "mode_histogram": {"mode0": base / 100 * 0.7, "mode1": base / 100 * 0.3, "invalid": 1 - base / 100},
                "judge": {"label": "oracle", "backend": "oracle", "calls": 4, "cache_hits": 0}}
        if artifacts:
            ls = list(range(1, 17))
            arts["exposure_curve"] = {"lengths": ls, "exaccerr": [(100 - base) * math.log2(1 + x) / 4 for x in ls],
                                      "stderr": [1.0 + 0.2 * x for x in ls], "self": model == "teacher"}
    else:
        metrics = {"ece": round(0.3 - base / 400 + jitter / 100, 4), "cls_acc": base + jitter}
        acc = base / 100
        arts = {}
        if artifacts:
            arts["reliability"] = [{"lo": b / 10, "hi": (b + 1) / 10, "count": 0 if b < 5 else 4,
                                    "accuracy": None if b < 5 else min(1.0, acc + (b - 7) / 20),
                                    "confidence": None if b < 5 else b / 10 + 0.05} for b in range(10)]
    rec = {"group": group, "model": model, "task": task, "seed": seed, "metrics": metrics, "n_examples": 12,
           "task_version": 2 if task == "toy" else 1, "metric_versions": {m: 1 for m in metrics},
           "artifacts": arts, "wall_time_s": 1.5}
    _write(cell / "metrics.json", rec)
    gens = []
    for i in range(8):
        fam = FAMILIES[i % 3]
        gens.append({"id": f"{task}-{i}", "prompt": f"Q{i} <{fam}> what & why?", "references": [f"answer {i}"],
                     "response": f"{model} says {i} <b>not bold</b>", "n_tokens": 5, "family": fam,
                     "check": {"valid": (i + len(model)) % 2 == 0}})
    _write(cell / "generations.jsonl", "".join(json.dumps(g) + "\n" for g in gens))
    _write(cell / "DONE", {"key": "x"})


def make_run(out: Path, *, methods=("minillm", "broken", "kd", "sft"), students=tuple(STUDENTS),
             tasks=("toy", "sst2"), artifacts: bool = True) -> Path:
    cfg = {"preset": "synthetic", "teacher": "gpt2-toy-m", "students": list(students), "methods": list(methods),
           "tasks": list(tasks), "train_task": "toy", "max_length": 48, "max_prompt_length": 24,
           "eval": {"seeds": SEEDS, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 24,
                    "max_prompt_tokens": 24, "no_repeat_ngram_size": 0},
           "distill": {"steps": 30, "batch_size": 16, "lr": 0.003, "schedule": "cosine"}}
    _write(out / "config.json", cfg)
    _write(out / "run_info.json", {"wall_time_s": 123.4, "failures": []})
    models = [("_teacher", "teacher")]
    for s in students:
        models.append((s, "student-base"))
        for m in methods:
            cell = out / "cells" / "train" / s / m
            if m == "broken":
                _write(cell / "error.json", {"kind": "train", "name": m, "student": s,
                                             "error": "RuntimeError: boom", "traceback": "..."})
                continue
            _fake_safetensors(cell / "model", STUDENTS[s])
            counters = {"student_tokens": 1000, "teacher_forward_tokens": 0 if m == "sft" else 1000,
                        "generated_tokens": 500 if m == "minillm" else 0}
            _write(cell / "result.json", {"model_path": str(cell / "model"), "method": m, "student": s,
                                          "wall_time_s": 12.0, "counters": counters})
            hist = [{"step": k * 10, "lr": 1e-3, "loss": 3.0 - k * 0.3 + (0.1 if m == "kd" else 0),
                     "grad_norm": 1.0, **({"fkl": 2.0 - k * 0.2} if m == "kd" else {}),
                     **({"pg": 0.5 / k, "single_step": 1.5 - 0.1 * k} if m == "minillm" else {})} for k in (1, 2, 3)]
            _write(cell / "history.json", hist)
            _write(cell / "config.json", {"method": m, "student": s})
            _write(cell / "DONE", {"key": "x"})
            models.append((s, m))
    for group, model in models:
        key = (None if group == "_teacher" else group, model)
        for task in tasks:
            for seed in SEEDS:
                if (group, model, task) == ("gpt2-toy-xs", "minillm", "sst2"):
                    failed = True  # every seed of this cell failed
                else:
                    failed = (group, model, task, seed) == ("gpt2-toy-xs", "kd", "sst2", 30)
                if failed:
                    _write(out / "cells" / "eval" / group / model / task / f"seed{seed}" / "error.json",
                           {"kind": "eval", "name": model, "student": group, "task": task, "seed": seed,
                            "error": "ValueError: bad", "traceback": "..."})
                    continue
                _eval_cell(out, group, model, task, seed, VALIDITY[key], artifacts)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = make_run(tmp_path_factory.mktemp("report") / "run")
    summarize(out, quiet=True)
    return out


def _md_row(md: str, student: str | None, method: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[1] == method and (student is None or cells[0].startswith(student)):
            return cells
    raise AssertionError(f"no row {student}/{method} in\n{md}")


def _col(md: str, title: str) -> int:
    head = [c.strip() for c in md.splitlines()[0].strip().strip("|").split("|")]
    return next(i for i, c in enumerate(head) if c.startswith(title))


# ------------------------------------------------------------------------------------------------
# tables


def test_leaderboard_markdown_bold_star_failed(built):
    md = (built / "leaderboard.md").read_text()
    v = _col(md, "toy/validity")
    # Rows: teacher on top, then per student (config order) base and the methods: known ones in the
    # canonical (paper) order whatever the config's order, then the others.
    order = [(c[0].split(" (")[0], c[1]) for c in (l.strip("|").split("|") for l in md.splitlines()[2:11])]
    assert [m.strip() for _, m in order][:6] == ["teacher", "student-base", "sft", "kd", "minillm", "broken"]
    teacher = _md_row(md, None, "teacher")
    assert teacher[v] == "70.00 [69.00, 71.00]"  # mean [95% CI]; no bold, no star on the teacher
    best_s = _md_row(md, "gpt2-toy-s", "minillm")
    assert best_s[v] == "**75.00 [74.00, 76.00]**★"  # best of its group and beats the teacher
    assert _md_row(md, "gpt2-toy-s", "kd")[v] == "55.00 [54.00, 56.00]"  # significantly worse: not bold
    assert _md_row(md, "gpt2-toy-xs", "kd")[v] == "**40.00 [39.00, 41.00]**"  # best of the other group, below teacher
    assert "★" not in _md_row(md, "gpt2-toy-xs", "kd")[v]
    # Lower is better for ECE: the lowest value is bold and beats the teacher's higher ECE.
    ece = _col(md, "sst2/ece ↓")
    assert _md_row(md, "gpt2-toy-s", "minillm")[ece].startswith("**0.113")
    assert _md_row(md, "gpt2-toy-s", "minillm")[ece].endswith("★")
    # Failed cells say failed, never a number.
    broken = _md_row(md, "gpt2-toy-s", "broken")
    assert broken[2:] == ["failed"] * (len(broken) - 2)
    assert _md_row(md, "gpt2-toy-xs", "minillm")[ece] == "failed"
    assert _md_row(md, "gpt2-toy-xs", "minillm")[v] != "failed"
    assert _md_row(md, "gpt2-toy-xs", "kd")[ece].endswith("†")  # one of three seeds failed
    assert "RuntimeError: boom" in md and "Judge: oracle" in md
    assert "gpt2-toy-s (96k)" in md and "gpt2-toy-xs (18k)" in md


def test_leaderboard_json_and_csv_schema(built):
    rows = json.loads((built / "leaderboard.json").read_text())
    need = {"student", "method", "task", "metric", "mean", "std", "n_seeds", "judge", "n_examples", "version"}
    assert all(need <= set(r) for r in rows)
    by = {(r["student"], r["method"], r["task"], r["metric"]): r for r in rows}
    r = by[("gpt2-toy-xs", "kd", "sst2", "cls_acc")]
    assert r["n_seeds"] == 2 and r["n_failed_seeds"] == 1
    assert by[("gpt2-toy-s", "sft", "toy", "judge")]["judge"] == "oracle"
    assert by[("gpt2-toy-s", "sft", "toy", "validity")]["judge"] is None
    assert by[("gpt2-toy-s", "sft", "toy", "validity")]["version"] == {"task": 2, "metric": 1}
    assert by[(None, "teacher", "toy", "validity")]["mean"] == 70.0
    assert not any(r["method"] == "broken" for r in rows)  # failed cells are no rows, never zeros
    assert not any(k[1:] == ("minillm", "sst2") and k[0] == "gpt2-toy-xs" for k in by)
    csv_lines = (built / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[0].startswith("student,method,task,metric,mean,ci_low,ci_high,std,std_between,std_within,"
                                   "n_train_seeds,n_eval_seeds,n_prompts,n_seeds")
    assert len(csv_lines) == len(rows) + 1


def test_delta_view(built):
    md = (built / "leaderboard_delta.md").read_text()
    v = _col(md, "toy/validity")
    # the fake seeds move every model alike: the paired delta is constant, its CI has zero width
    assert _md_row(md, "gpt2-toy-s", "kd")[v] == "**+5.00 [+5.00, +5.00]**"
    assert _md_row(md, "gpt2-toy-s", "sft")[v] == "_50.00_"  # the baseline row shows its own values
    assert _md_row(md, "gpt2-toy-xs", "minillm")[_col(md, "sst2/ece")] == "failed"
    assert not any(line.split("|")[2].strip() == "teacher" for line in md.splitlines()[2:] if line.startswith("|"))
    html = (built / "report.html").read_text()
    assert "rgba(26,127,55" in html and "rgba(176,0,32" in html  # better green, worse red


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """One student, no sft, only sst2: the toy-world plots and the scaling plot have no data."""
    return make_run(tmp_path_factory.mktemp("small") / "run", methods=("kd", "minillm"), students=("gpt2-toy-s",),
                    tasks=("sst2",))


def test_plots_skip_cleanly_and_no_default_baseline(small):
    summarize(small, quiet=True)
    stems = {p.stem for p in (small / "plots").glob("*.png")}
    # No toy metrics or artifacts (validity, modes, families, exposure), one student (no scaling).
    assert stems == {"sst2_metrics", "sst2_reliability", "training_curves"}
    assert "could not be drawn" not in (small / "report.html").read_text()
    assert not (small / "leaderboard_delta.md").exists()  # no sft: no default baseline
    assert "No baseline" in (small / "report.html").read_text()


def test_delta_baseline_flag_and_identical_rebuild(small):
    with pytest.raises(ConfigError, match="--baseline 'sft'.*methods present: student-base, kd, minillm"):
        summarize(small, quiet=True, baseline="sft")
    from kdbench.cli import main

    assert main(["summarize", str(small), "--baseline", "nope"]) == 2
    assert main(["summarize", str(small), "--baseline", "kd"]) == 0  # the CLI path of `run_bench.py summarize`
    md = (small / "leaderboard_delta.md").read_text()
    acc = _col(md, "sst2/cls_acc")
    assert "`kd`" in md and _md_row(md, "gpt2-toy-s", "minillm")[acc] == "**+20.00 [+20.00, +20.00]**"
    # The teacher row is compared with the single student group's baseline.
    assert _md_row(md, None, "teacher")[acc] == "+15.00"
    assert _md_row(md, "gpt2-toy-s", "minillm")[_col(md, "sst2/ece")] == "**-0.050 [-0.050, -0.050]**"

    # Rebuilding gives the same bytes, plots included; leftovers of an earlier build go away.
    first = _digest(small)
    (small / "plots" / "stale.png").write_bytes(b"old")
    assert main(["summarize", str(small), "--baseline", "kd"]) == 0
    assert _digest(small) == first
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex", "leaderboard_delta.md",
            "cost.md", "cost.csv", "report.html", "plots/sst2_reliability.svg"} <= set(first)


def test_cost_table(built):
    md = (built / "cost.md").read_text()
    mm = _md_row(md, "gpt2-toy-s", "minillm")
    # no budget or parameter counts recorded by these fake cells; one training run; 6 eval cells x 1.5 s;
    # 3 toy seeds x 4 calls
    assert mm[2:] == ["–", "–", "–", "1", "12.0", "–", "–", "1,000", "1,000", "500", "9.0", "12"]
    assert _md_row(md, "gpt2-toy-s", "broken")[6] == "failed"
    assert _md_row(md, None, "teacher")[2] == "–"
    csv_text = (built / "cost.csv").read_text()
    assert "gpt2-toy-s,minillm,ok,,,,1,12.0,,,1000,1000,500,9.0,12" in csv_text


def test_latex_shape(built):
    tex = (built / "leaderboard.tex").read_text()
    assert check_tex_shape(tex) == []
    assert tex.count("\\begin{tabular}") == 1 and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{3}{c}{toy}" in tex and "\\multicolumn{2}{c}{sst2}" in tex
    assert "$\\mathbf{75.00}_{\\pm 1.00}^{*}$" in tex
    assert "\\textit{failed}" in tex and "mode\\_coverage" in tex and "\\multicolumn{2}{l}{Teacher}" in tex
    assert tex.count("\\midrule") == 3  # below the header, below the teacher, between the two students
    # The checker itself catches what a compiler would reject.
    assert check_tex_shape(tex.replace("\\pm 1.00}", "\\pm 1.00", 1))
    assert check_tex_shape(tex.replace(" & sft & ", " & sft & & ", 1))


# ------------------------------------------------------------------------------------------------
# plots


KINDS = ["toy_metrics", "sst2_metrics", "toy_validity_vs_coverage", "toy_mode_histogram", "toy_validity_by_family",
         "toy_exposure_bias", "sst2_reliability", "training_curves", "toy_scaling", "sst2_scaling", "toy_forest",
         ]


def test_every_plot_kind_is_written(built):
    for stem in KINDS:
        png, svg = built / "plots" / f"{stem}.png", built / "plots" / f"{stem}.svg"
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", stem
        w, h = struct.unpack(">II", raw[16:24])
        assert w > 300 and h > 200, stem
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()[:1000], stem
    assert {p.stem for p in (built / "plots").glob("*.png")} == set(KINDS)


def test_failed_teacher_stage(tmp_path):
    """No teacher row (its stage failed): the row says failed, and plots that draw the teacher still work."""
    from kdbench.report import plots, tables

    out = make_run(tmp_path / "r", methods=("sft",), students=("gpt2-toy-s",), tasks=("toy",))
    shutil.rmtree(out / "cells" / "eval" / "_teacher")
    _write(out / "cells" / "train" / "_teacher" / "error.json",
           {"kind": "stage", "name": "teacher", "student": None, "error": "OSError: disk full", "traceback": "..."})
    run = load_run(out)
    md = tables.markdown(run)
    assert _md_row(md, None, "teacher")[2:] == ["failed"] * len(run.columns)
    assert "★" not in md.split("\n\n")[0] and "stage teacher: OSError: disk full" in md
    import matplotlib

    st = plots.styles_for(run)
    with matplotlib.rc_context(plots.STYLE):
        for fn in (plots.plot_exposure, plots.plot_validity_coverage, plots.plot_bars):
            assert len(fn(run, st, tmp_path / "plots")) == 1, fn.__name__


def test_empty_run_folder(tmp_path):
    (tmp_path / "cells").mkdir()
    assert summarize(tmp_path, quiet=True) == []
    assert (tmp_path / "leaderboard.md").read_text() == "_no finished cells yet_\n"
    assert (tmp_path / "report.html").exists() and json.loads((tmp_path / "leaderboard.json").read_text()) == []


# ------------------------------------------------------------------------------------------------
# html and rebuilds


def test_html_is_self_contained(built):
    html = (built / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == len(KINDS) and all(s.startswith("data:image/png;base64,") for s in imgs)
    for section in ("setup", "leaderboard", "delta", "cost", "plots", "samples", "failures"):
        assert f'<section id="{section}">' in html
    # Setup, samples (escaped, side by side) and the seed they come from.
    assert "gpt2-toy-m" in html and "10, 20, 30" in html and "temperature 1.0" in html and "toy v2" in html
    assert "teacher says 0 &lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    assert "(seed 10, 6 of 8 prompts)" in html


def _digest(folder: Path) -> dict[str, str]:
    skip = {"cells", "cache"}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


# ------------------------------------------------------------------------------------------------
# a real browser

CHECK_JS = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const out = document.createElement('pre');
  out.id = 'kdbench-check';
  out.textContent = JSON.stringify({images: imgs.length, broken: bad, errors: window.__errors,
                                    title: document.title, sections: document.querySelectorAll('section').length});
  document.body.appendChild(out);
});
</script>"""


def test_report_in_headless_chromium(built, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        # .ci/run sets this after installing chromium: there a missing browser is a failure, not a skip
        assert os.environ.get("KDBENCH_REQUIRE_BROWSER") != "1", "KDBENCH_REQUIRE_BROWSER=1 but no chromium on PATH"
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); browser check skipped")
    page = tmp_path / "report_check.html"
    # The check script goes into a copy: report.html itself stays script-free.
    page.write_text((built / "report.html").read_text().replace("</body>", CHECK_JS + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="kdbench-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the check script did not run; stderr:\n{proc.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["images"] == len(KINDS) and result["broken"] == 0, result
    # every section of the page (setup ... samples, findings, and failures: this run has failed cells) rendered
    n_sections = (built / "report.html").read_text().count("<section ")
    assert n_sections == 8 and result["errors"] == [] and result["sections"] == n_sections, result
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console
