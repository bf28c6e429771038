"""The report's verdict sections: findings (each claim's verdict and evidence, metric health) and the
tuning table."""
from __future__ import annotations

from html import escape as _esc


def e(x) -> str:
    return _esc(str(x), quote=True)

from .data import Run


def _tuning(run: Run) -> str:
    from .tuning import tuning_markdown

    md = tuning_markdown(run)
    return f"<h3>Tuning (dev split)</h3><pre>{e(md)}</pre>" if md else ""


VERDICT_CLASS = {"supported": "good", "contradicted": "bad", "inconclusive": "ns", "not measured": "dash"}


def _findings(run: Run) -> str:
    """Each registered claim with its verdict and evidence (findings.md has the same)."""
    fs = run.verdicts.findings if run.verdicts is not None else []
    health = "".join(f"<li><code>{e(h['task'])}/{e(h['metric'])}</code>: {e(h['issue'])}</li>"
                     for h in (run.verdicts.health if run.verdicts is not None else []))
    health = (f"<p>Metrics that cannot tell the students apart in this run:</p><ul>{health}</ul>" if health else "")
    if not fs:
        return '<p class="note">No claims evaluated.</p>' + health
    labels = "".join(f"<li><code>{e(m)}</code> here is <b>{e(label)}</b></li>" for m, label in sorted(run.labels.items()))
    if labels:  # claims name methods by their registered names
        health = f"<p class='note'>Labels:</p><ul>{labels}</ul>" + health
    rows = []
    for f in fs:
        ev = "".join(
            f"<li>{e(x.get('requirement', ''))} [{e(str(x.get('task', '')))}]: "
            + (f"Δ {x['delta']:+.3g} [{x['ci_low']:+.3g}, {x['ci_high']:+.3g}], adj. p {x['p_adjusted']:.3g}, "
               if x.get("delta") is not None and x.get("ci_low") is not None and x.get("p_adjusted") is not None
               else "")
            + f"{e(str(x.get('status', '')))}</li>" for x in f.get("evidence", []))
        rows.append(f'<tr><td class="l">{e(f["id"])}</td><td class="l">{e(f["text"])}</td>'
                    f'<td><span class="{VERDICT_CLASS.get(f["verdict"], "")}">{e(f["verdict"])}</span></td>'
                    f'<td class="l"><details><summary>{e(f.get("reason", ""))[:160]}</summary><ul>{ev}</ul>'
                    "</details></td></tr>")
    return ("<table><thead><tr><th>claim</th><th>text</th><th>verdict</th><th>evidence</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table><p class='note'>A claim is supported when every comparison it "
            "needs is significant in the claimed direction, contradicted when any is significant the other way, "
            "inconclusive otherwise, not measured when the run lacks its methods or metrics. Also in findings.md "
            "/ findings.json; add your own with <code>kdbench.claims.register_claim</code>.</p>" + health)
