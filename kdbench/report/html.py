"""report.html: one self-contained file (inline CSS, plots as base64 PNG, no scripts, no network).

Sections: setup, leaderboard, delta to the baseline, cost, plots, a sample browser (a few prompts
with every model's response side by side, first evaluation seed), failures. Nothing in it depends
on the time it was built (the git commit shown is the run's, or else that of the summarizing code),
so rebuilding gives the same bytes.
"""
from __future__ import annotations

import base64
import html
import struct
from typing import Any

from .data import REFERENCE_ROWS, TEACHER, Key, Run, first_seed_generations, tasks
from .plots import Figure, styles_for
from .cost import COST_FIELDS, _fmt_cost
from .html_verdicts import _findings, _tuning
from .provenance import git_commit, row_sources
from .tables import (DASH, PARTIAL, STAR, best_by_group, ci_note, cell_flags, decimals, delta_cells, direction,
                     failure_lines, student_label)

N_SAMPLES = 6

CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#d9d9de; --bg:#fff; --soft:#f5f5f7; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { padding: 20px 32px 8px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: var(--muted); }
nav { position: sticky; top: 0; background: rgba(255,255,255,.96); border-bottom: 1px solid var(--line);
      padding: 8px 32px; z-index: 2; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 600; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { margin-top: 28px; }
h2 { font-size: 18px; border-bottom: 2px solid var(--fg); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.note { color: var(--muted); font-size: 12.5px; max-width: 1000px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; }
th.l, td.l { text-align: left; }
tr.group td { border-top: 2px solid #9a9aa0; }
tr.teacher td { background: #fafafa; font-style: italic; }
.std { color: var(--muted); font-size: 11.5px; }
.star { color: #b8860b; }
.failed { color: #b00020; font-weight: 600; }
.dash { color: #aaa; }
table.kv td { text-align: left; white-space: normal; }
table.kv td:first-child { font-weight: 600; color: var(--muted); width: 200px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 18px; }
figure.wide { grid-column: 1 / -1; }
thead tr:first-child th:not(.l) { text-align: center; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 12.5px; color: var(--muted); margin-top: 6px; }
figcaption b { color: var(--fg); }
details { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; background: #fff; }
summary { cursor: pointer; padding: 8px 12px; background: var(--soft); border-radius: 6px; }
summary code { font-size: 12.5px; }
.sample { padding: 10px 12px; }
.responses { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 10px; margin-top: 8px; }
.resp { border: 1px solid var(--line); border-left: 5px solid var(--c, #888); border-radius: 4px; padding: 6px 8px; }
.resp h4 { margin: 0 0 4px; font-size: 13px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono",
      monospace; }
.ok { color: #1a7f37; } .bad { color: #b00020; } .good { color: #1a7f37; font-weight: 600; } td.ns, span.ns { color: #888; background: #f0f0f0; }
.refs { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; padding: 16px 32px; border-top: 1px solid var(--line); }
"""


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ------------------------------------------------------------------------------------------------
# sections


def _setup(run: Run) -> str:
    from .. import __version__

    c = run.config
    ev = c.get("eval", {}) or {}
    d = c.get("distill", {}) or {}
    students = [student_label(run, s) for s in run.students] or c.get("students", [])
    tv = {r["task"]: r["task_version"] for r in run.rows}
    mv = {r["metric"]: r["metric_version"] for r in run.rows}
    judges = sorted({r["judge"] for r in run.rows if r["judge"]})
    items = [
        ("preset", c.get("preset", DASH)),
        ("teacher", c.get("teacher", DASH)),
        ("students", ", ".join(students) or DASH),
        ("methods", ", ".join(m for m in run.methods if m not in REFERENCE_ROWS) or DASH),
        ("tasks (eval)", ", ".join(tasks(run)) or ", ".join(c.get("tasks", [])) or DASH),
        ("train task", c.get("train_task", DASH)),
        ("decoding", f"temperature {ev.get('temperature', DASH)}, top-p {ev.get('top_p', DASH)}, "
                     f"top-k {ev.get('top_k', DASH)}, ≤ {ev.get('max_new_tokens', DASH)} new tokens, prompt ≤ "
                     f"{ev.get('max_prompt_tokens', DASH)} tokens, no-repeat n-gram "
                     f"{ev.get('no_repeat_ngram_size', DASH)}"),
        ("evaluation seeds", ", ".join(map(str, ev.get("seeds", []))) or DASH),
        ("distillation budget", f"{d.get('steps', DASH)} steps × batch {d.get('batch_size', DASH)}, "
                                f"lr {d.get('lr', DASH)} ({d.get('schedule', DASH)})" if d else DASH),
        ("lengths", f"max length {c.get('max_length', DASH)}, max prompt {c.get('max_prompt_length', DASH)}"),
        ("task versions", ", ".join(f"{t} v{v}" for t, v in sorted(tv.items())) or DASH),
        ("metric versions", ", ".join(f"{m} v{v}" for m, v in sorted(mv.items())) or DASH),
        ("judge", ", ".join(judges) or "none"),
        ("kdbench", __version__),
        ("git commit", git_commit(run) or "not available"),
    ]
    if run.run_info.get("wall_time_s") is not None:
        items.append(("benchmark wall time", f"{float(run.run_info['wall_time_s']):,.1f} s"))
    body = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{body}</table>'


def _head(run: Run, label: str = "method") -> str:
    cols = run.columns
    ts = list(dict.fromkeys(t for t, _ in cols))
    top = "".join(f'<th colspan="{sum(1 for c in cols if c[0] == t)}">{e(t)}</th>' for t in ts)
    sub = "".join(f"<th>{e(m)} {'↑' if direction(run, (t, m)) else '↓'}</th>" for t, m in cols)
    return (f'<thead><tr><th class="l" rowspan="2">student</th><th class="l" rowspan="2">{label}</th>{top}</tr>'
            f"<tr>{sub}</tr></thead>")


def _table(run: Run, rows: list[str], note: str) -> str:
    return (f'<div class="scroll"><table>{_head(run)}<tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="note">{note}</p>')


def _row_open(run: Run, keys: list[Key], i: int) -> str:
    key = keys[i]
    cls = []
    if key[1] == TEACHER:
        cls.append("teacher")
    if i > 0 and keys[i - 1][0] != key[0]:
        cls.append("group")
    first = i == 0 or keys[i - 1][0] != key[0]
    who = e(student_label(run, key[0])) if first else ""
    tr = f'<tr class="{" ".join(cls)}">' if cls else "<tr>"
    return tr + f'<td class="l">{who}</td><td class="l">{e(key[1])}</td>'


def _leaderboard(run: Run) -> str:
    if not run.keys:
        return '<p class="note">No finished cells yet.</p>'
    best = best_by_group(run)
    rows = []
    for i, key in enumerate(run.keys):
        cells = []
        for c in run.columns:
            f = cell_flags(run, key, c, best)
            r = f["row"]
            if r is None:
                cells.append('<td><span class="failed">failed</span></td>' if f["failed"] else
                             f'<td><span class="dash">{DASH}</span></td>')
                continue
            dd = decimals(run, c)
            v = f"{r['mean']:.{dd}f}"
            v = f"<strong>{v}</strong>" if f["bold"] else v
            marks = (f'<span class="star" title="beats the teacher">{STAR}</span>' if f["star"] else "") + \
                    (f'<span class="failed" title="some seeds failed">{PARTIAL}</span>' if f["partial"] else "")
            has_ci = r.get("ci_low") is not None
            title = (f"95% CI [{r['ci_low']:.{dd}f}, {r['ci_high']:.{dd}f}]; " if has_ci else "")
            title += (f"training seeds={r.get('n_train_seeds') or 1}, eval seeds={r.get('n_eval_seeds') or r['n_seeds']}, "
                      f"prompts={r.get('n_prompts') or r['n_examples']}")
            if r.get("std_between") is not None:
                title += f", std between training seeds={r['std_between']:.{dd}f}"
            title += f", judge={r['judge']}" if r["judge"] else ""
            spread = (f"[{r['ci_low']:.{dd}f}, {r['ci_high']:.{dd}f}]" if has_ci else f"± {r['std']:.{dd}f}")
            cells.append(f'<td title="{e(title)}">{v} <span class="std">{spread}</span>{marks}</td>')
        rows.append(_row_open(run, run.keys, i) + "".join(cells) + "</tr>")
    bold = ("not significantly worse than the best distilled student of its group (paired bootstrap, "
            "Benjamini-Hochberg, alpha 0.05)" if run.verdicts is not None else "best distilled student of its group")
    note = (f"{e(ci_note(run))} <strong>Bold</strong>: {bold} per column; <span class='star'>{STAR}</span>: beats the teacher (not marked on "
            "ExAccErr, 0 for the teacher by definition); "
            f"<span class='failed'>{PARTIAL}</span>: some seeds failed; <span class='failed'>failed</span>: no seed "
            "finished. Hover a cell for its CI, seed and prompt counts. Also in leaderboard.md / .csv / .json / .tex.")
    return _table(run, rows, note)


def _delta(run: Run, baseline: str | None) -> str:
    if not baseline:
        return ('<p class="note">No baseline: the run has no <code>sft</code> rows; pass '
                "<code>summarize --baseline METHOD</code>.</p>")
    keys, cells = delta_cells(run, baseline)
    scale = {}
    for c in run.columns:
        ds = [abs(x["delta"]) for (k, cc), x in cells.items() if cc == c and x["status"] == "ok"]
        scale[c] = max(ds) if ds else 0.0
    rows = []
    for i, key in enumerate(keys):
        tds = []
        for c in run.columns:
            x = cells[(key, c)]
            dd = decimals(run, c)
            st = x["status"]
            if st == "ok":
                # Colour only what is significant (in the metric's own direction); the rest is grey:
                # within noise. Without comparisons (no scores to test) nothing is coloured.
                a = 0.15 + 0.55 * (abs(x["delta"]) / scale[c]) if scale[c] else 0.0
                rgb = "26,127,55" if x["better"] else "176,0,32"
                sig = x.get("significant")
                style = (f' style="background: rgba({rgb},{a:.2f})"' if sig and x["delta"] != 0
                         else ' class="ns"' if sig is False else "")
                tip = (f' title="95% CI [{x["ci_low"]:+.{dd}f}, {x["ci_high"]:+.{dd}f}], adjusted p={x["p_adjusted"]:.3g}"'
                       if x.get("ci_low") is not None else "")
                tds.append(f"<td{style}{tip}>{x['delta']:+.{dd}f}</td>")
            elif st == "baseline":
                tds.append(f"<td><em>{x['value']:.{dd}f}</em></td>")
            elif st == "failed":
                tds.append('<td><span class="failed">failed</span></td>')
            else:
                tds.append(f'<td><span class="dash">{"n/a" if st == "no-baseline" else DASH}</span></td>')
        rows.append(_row_open(run, keys, i) + "".join(tds) + "</tr>")
    note = (f"Each cell: mean minus the mean of the <code>{e(baseline)}</code> student of the same group (its own "
            "row shows its values in italics). Coloured only where the paired difference is significant after "
            "Benjamini-Hochberg correction over its column (green: better in the metric's direction, red: worse; "
            "the deeper, the larger); grey: within noise. Hover for the 95% CI and adjusted p-value. Also in "
            "leaderboard_delta.md and comparisons.json.")
    return _table(run, rows, note)


def _cost(run: Run, rows: list[dict]) -> str:
    if not rows:
        return '<p class="note">No cells yet.</p>'
    head = "".join(f"<th>{e(t)}</th>" for _, t in COST_FIELDS)
    train_fields = {"train_wall_time_s", "student_tokens", "teacher_forward_tokens", "generated_tokens"}
    body = []
    for i, r in enumerate(rows):
        tds = []
        for f, _ in COST_FIELDS:
            if r["status"] == "failed" and f in train_fields:
                tds.append('<td><span class="failed">failed</span></td>')
            else:
                tds.append(f"<td>{e(_fmt_cost(f, r[f]))}</td>")
        body.append(_row_open(run, [(x["student"], x["method"]) for x in rows], i) + "".join(tds) + "</tr>")
    note = ("Training cost from each method's train cell (result.json counters); <code>sft</code> is a cached stage "
            "shared with the methods that start from it. Teacher and student-base are shared stages: only their "
            "evaluation cost is shown. Evaluation time and judge calls are summed over tasks and seeds. Also in "
            "cost.md / cost.csv.")
    return (f'<div class="scroll"><table><thead><tr><th class="l">student</th><th class="l">method</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div><p class="note">{note}</p>')


def _plots(figs: list[Figure], problems: list[str]) -> str:
    if not figs:
        return '<p class="note">No plots: no finished cells yet.</p>'
    items = []
    for f in figs:
        raw = f.png.read_bytes()
        w, h = struct.unpack(">II", raw[16:24])  # PNG IHDR: wide figures get a full row of the grid
        data = base64.b64encode(raw).decode("ascii")
        cls = ' class="wide"' if w > 1.7 * h or w > 1000 else ""  # too big to read in half a row
        items.append(f'<figure id="plot-{e(f.stem)}"{cls}><img src="data:image/png;base64,{data}" alt="{e(f.title)}">'
                     f"<figcaption><b>{e(f.title)}.</b> {e(f.caption)} <code>plots/{e(f.stem)}.png</code>, "
                     f"<code>.svg</code></figcaption></figure>")
    out = f'<div class="plots">{"".join(items)}</div>'
    if problems:
        out += '<p class="note">Plots that could not be drawn: ' + "; ".join(e(p) for p in problems) + "</p>"
    return out


def _pick(gens: list[dict], n: int) -> list[dict]:
    """Up to n examples, round-robin over prompt families so the sample shows each kind."""
    fams: dict[str, list[dict]] = {}
    for g in gens:
        fams.setdefault(str(g.get("family", "")), []).append(g)
    picked, i = [], 0
    while len(picked) < n and any(i < len(v) for v in fams.values()):
        for v in fams.values():
            if i < len(v) and len(picked) < n:
                picked.append(v[i])
        i += 1
    return picked


def _samples(run: Run) -> str:
    st = styles_for(run)
    several = len(run.students) > 1
    parts = []
    for task in tasks(run):
        seed, gens = first_seed_generations(run, task)
        keys = [k for k in run.keys if k in gens]
        if not keys:
            continue
        by_id = {k: {g["id"]: g for g in gens[k]} for k in keys}
        examples = _pick(gens[keys[0]], N_SAMPLES)
        parts.append(f"<h3>{e(task)} <span class='note'>(seed {e(seed)}, {len(examples)} of "
                     f"{len(gens[keys[0]])} prompts)</span></h3>")
        for j, ex in enumerate(examples):
            refs = ex.get("references") or []
            fam = f"[{ex['family']}] " if ex.get("family") else ""
            prompt = str(ex.get("prompt", ""))
            short = prompt if len(prompt) <= 110 else prompt[:107] + "…"
            resp = []
            for k in keys:
                g = by_id[k].get(ex["id"])
                text = DASH if g is None else (g.get("response") or "(empty)")
                chk = (g or {}).get("check")
                mark = ""
                if isinstance(chk, dict) and "valid" in chk:
                    mark = (' <span class="ok">✓ valid</span>' if chk["valid"] else
                            ' <span class="bad">✗ invalid</span>')
                resp.append(f'<div class="resp" style="--c:{st.colors[k[1]]}"><h4>{e(st.label(k, several))}{mark}</h4>'
                            f"<pre>{e(text)}</pre></div>")
            ref_html = "".join(f"<pre>{e(r)}</pre>" for r in refs[:3])
            more = f" (+{len(refs) - 3} more)" if len(refs) > 3 else ""
            parts.append(f"<details{' open' if j == 0 else ''}><summary>{e(fam)}<code>{e(short)}</code></summary>"
                         f'<div class="sample"><b>Prompt</b><pre>{e(prompt)}</pre>'
                         f'<div class="refs"><b>Reference{"s" if len(refs) > 1 else ""}{e(more)}</b>{ref_html}</div>'
                         f'<div class="responses">{"".join(resp)}</div></div></details>')
    return "".join(parts) or '<p class="note">No generations found.</p>'


def _sources(run: Run) -> str:
    runs = "".join(f"<tr><td>{e(s['label'])}</td><td><code>{e(s['path'])}</code></td></tr>" for s in run.sources)
    rows = "".join(f"<tr><td>{e(s or DASH)}</td><td>{e(m)}</td><td>{e(t)}</td><td>{e(', '.join(r) or DASH)}</td></tr>"
                   for s, m, t, r in row_sources(run))
    return (f'<table class="kv"><tr><th>run</th><th>folder</th></tr>{runs}</table>'
            f"<table><tr><th>student</th><th>method</th><th>task</th><th>from run(s)</th></tr>{rows}</table>")


def render(run: Run, figs: list[Figure], problems: list[str], baseline: str | None, cost: list[dict]) -> str:
    title = f"kdbench report: {run.config.get('preset') or run.out.name}"
    sections = [("setup", "Setup", _setup(run)), ("leaderboard", "Leaderboard", _leaderboard(run)),
                ("delta", f"Difference to {baseline or 'a baseline'}", _delta(run, baseline)),
                ("findings", "Findings", _findings(run)),
                ("cost", "Cost", _cost(run, cost) + _tuning(run)), ("plots", "Plots", _plots(figs, problems)),
                ("samples", "Samples", _samples(run))]
    if run.sources:
        sections.insert(1, ("sources", "Sources (merged run)", _sources(run)))
    fl = failure_lines(run)
    if fl:
        sections.append(("failures", f"Failures ({len(run.failures)} cells)",
                         "<ul>" + "".join(f"<li><code>{e(x)}</code></li>" for x in fl) + "</ul>"
                         "<p class=\"note\">Details (with tracebacks) in each cell's error.json; see "
                         "failures.json.</p>"))
    nav = "".join(f'<a href="#{sid}">{e(t.split(" (")[0])}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{e(t)}</h2>{content}</section>' for sid, t, content in sections)
    c = run.config
    n_methods = len([m for m in run.methods if m not in REFERENCE_ROWS])
    sub = (f"teacher {c.get('teacher', DASH)} → students {', '.join(run.students) or DASH}; {n_methods} methods; "
           f"tasks {', '.join(tasks(run)) or DASH}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><p>{e(sub)}</p></header><nav>{nav}</nav><main>{body}</main>"
            "<footer>Built by <code>python run_bench.py summarize</code> from the cells of this run folder; "
            "self-contained, opens offline.</footer></body></html>\n")
