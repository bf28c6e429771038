"""Claims as data, checked against a run's paired comparisons.

A `Claim` is a list of `Requirement`s; each names a method, the method it is compared with, a
metric (or a {task: metric, "*": default} map, e.g. a task's primary metric), the tasks it covers
and what the delta (method - other, from `kdbench.stats.compare_table` records) should show:

  higher / lower   significant (p_adjusted < alpha and CI excludes 0, the record's `significant`) in
                   that direction -> supported; significant the other way -> contradicted
  equivalent       CI inside [-margin, margin] -> supported; CI entirely outside -> contradicted
  at_least         (non-inferiority) ci_low > -margin -> supported; ci_high < -margin -> contradicted
  at_most          ci_high < margin -> supported; ci_low > margin -> contradicted
  vs_metric=M2     higher/lower of delta(metric) against delta(M2) (e.g. exposure bias at 16 vs at
                   8 tokens), judged by non-overlap of the two CIs: conservative, since the two
                   deltas are positively correlated; no multiplicity correction
Anything else is inconclusive. A requirement expands over every task in `tasks` that the run
measured the metric on ("*" = all of them) and over every student that has one of its methods;
other_student="larger" pairs a student with the next larger one (sizes from `student_sizes`).

Claim verdict: contradicted if any measured instance is contradicted; not measured if the run has
fewer students than `min_students` or no required requirement was measured at all; supported if
every instance of every required requirement is measured and supported; inconclusive otherwise.
Optional requirements (required=False) are reported and can only contradict.

Add one (e.g. in your method's file):
    register_claim("mykd-validity", "MyKD beats MiniLLM on validity", source="my paper",
                   requires=[dict(method="mykd", other="minillm", metric="validity", tasks=["toy"])])
List-valued method/other/metric in a requirement dict expand to one requirement per combination.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from . import paper_claims
from .registry import Registry

EXPECTS = ("higher", "lower", "equivalent", "at_least", "at_most")
VERDICTS = ("supported", "contradicted", "inconclusive", "not measured")


@dataclass(frozen=True)
class Requirement:
    method: str
    other: str
    metric: str | Mapping[str, str]  # a metric, or {task: metric, "*": default}
    expect: str = "higher"
    tasks: str | tuple[str, ...] = "*"  # "*" = every task of the run that has the metric
    margin: float = 0.0  # equivalent / at_least / at_most, in the metric's units
    vs_metric: str | None = None
    other_student: str = "same"  # "same" | "larger" (the next larger student)
    required: bool = True
    note: str = ""

    def __post_init__(self):
        if self.expect not in EXPECTS:
            raise ValueError(f"requirement expect='{self.expect}'; valid: {', '.join(EXPECTS)}")
        if self.other_student not in ("same", "larger"):
            raise ValueError(f"requirement other_student='{self.other_student}'; valid: same, larger")
        if self.vs_metric and self.expect not in ("higher", "lower"):
            raise ValueError("a vs_metric requirement expects 'higher' or 'lower'")
        if self.margin < 0:
            raise ValueError(f"requirement margin must be >= 0, got {self.margin}")
        if not isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.metric, Mapping):
            object.__setattr__(self, "metric", dict(self.metric))

    def metric_for(self, task: str) -> str | None:
        return self.metric.get(task, self.metric.get("*")) if isinstance(self.metric, dict) else self.metric

    def label(self) -> str:
        m = self.metric if isinstance(self.metric, str) else "primary metric"
        what = {"equivalent": f"within ±{self.margin:g} of", "at_least": f"at least (-{self.margin:g})",
                "at_most": f"at most (+{self.margin:g})"}.get(self.expect, self.expect + " than")
        m = f"{m} - {self.vs_metric} gap" if self.vs_metric else m
        other = f"{self.other} (larger student)" if self.other_student == "larger" else self.other
        return f"{self.method} {what} {other} on {m}" + ("" if self.required else " (optional)")


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    source: str = ""
    requirements: tuple[Requirement, ...] = ()
    notes: str = ""
    min_students: int = 1


CLAIMS: Registry[Claim] = Registry("claim")


def requirements(spec: Requirement | Mapping[str, Any]) -> list[Requirement]:
    """One Requirement, or a dict whose method/other/metric may be lists (their product)."""
    if isinstance(spec, Requirement):
        return [spec]
    spec = dict(spec)
    lists = {k: spec.pop(k) for k in ("method", "other", "metric")}
    lists = {k: [v] if isinstance(v, (str, Mapping)) else list(v) for k, v in lists.items()}
    return [Requirement(method=a, other=b, metric=m, **spec)
            for a, b, m in itertools.product(lists["method"], lists["other"], lists["metric"])]


def register_claim(id: str, text: str, requires: Iterable[Requirement | Mapping[str, Any]], *, source: str = "",
                   notes: str = "", min_students: int = 1) -> Claim:
    reqs = tuple(r for spec in requires for r in requirements(spec))
    if not any(r.required for r in reqs):
        raise ValueError(f"claim '{id}' needs at least one required requirement")
    claim = Claim(id=id, text=text, source=source, requirements=reqs, notes=notes, min_students=min_students)
    CLAIMS.add(id, claim, text)
    return claim


for _spec in paper_claims.PAPER_CLAIMS:  # the MiniLLM paper's claims, as data
    register_claim(**_spec)


# ------------------------------------------------------------------------------------------------
# evaluation


def _judge(req: Requirement, d: dict, vs: dict | None) -> tuple[str, str]:
    """(status, why) of one measured instance; d, vs: oriented {delta, ci_low, ci_high, significant}."""
    lo, hi, m = d["ci_low"], d["ci_high"], req.margin
    if req.vs_metric:  # is delta(metric) above / below delta(vs_metric)? non-overlapping CIs only
        above, below = lo > vs["ci_high"], hi < vs["ci_low"]
        ok, bad = (above, below) if req.expect == "higher" else (below, above)
        why = ("the CIs do not overlap, as claimed", "the CIs do not overlap, the other way", "the CIs overlap")
    elif req.expect in ("higher", "lower"):
        sig, up = bool(d["significant"]), d["delta"] > 0
        ok, bad = sig and up == (req.expect == "higher"), sig and up != (req.expect == "higher")
        why = (f"significant, {req.expect} as claimed", "significant, the other way", "not significant")
    else:
        ok, bad = {"equivalent": (-m <= lo and hi <= m, lo > m or hi < -m),
                   "at_least": (lo > -m, hi < -m), "at_most": (hi < m, lo > m)}[req.expect]
        why = (f"CI inside the {req.expect} margin", f"CI entirely outside the {req.expect} margin",
               "CI crosses the margin")
    return ("supported", why[0]) if ok else ("contradicted", why[1]) if bad else ("inconclusive", why[2])


class _Run:
    """What a list of comparison records measured, indexed for lookups in either orientation."""

    def __init__(self, comparisons: Sequence[dict], student_sizes: Mapping[str, float] | None):
        self.index = {}
        for r in comparisons:
            a, b = (r.get("student"), r["method"]), (r.get("baseline_student", r.get("student")), r["baseline"])
            self.index[(r["task"], r["metric"], a, b)] = r
        self.methods = {x for r in comparisons for x in (r["method"], r["baseline"])}
        self.metric_tasks: dict[str, set] = {}
        for r in comparisons:
            self.metric_tasks.setdefault(r["metric"], set()).add(r["task"])
        self.students = sorted({s for r in comparisons for s in (r.get("student"), r.get("baseline_student"))
                                if s is not None})
        self.student_of = {}  # method -> students that have it
        for r in comparisons:
            for s, m in ((r.get("student"), r["method"]), (r.get("baseline_student", r.get("student")), r["baseline"])):
                self.student_of.setdefault(m, set()).add(s)
        self.sizes = dict(student_sizes or {})

    def lookup(self, task, metric, a, b) -> dict | None:
        if (r := self.index.get((task, metric, a, b))) is not None:
            return {k: r[k] for k in ("delta", "ci_low", "ci_high", "p_adjusted", "significant")}
        if (r := self.index.get((task, metric, b, a))) is not None:  # flip the orientation
            return {"delta": -r["delta"], "ci_low": -r["ci_high"], "ci_high": -r["ci_low"],
                    "p_adjusted": r["p_adjusted"], "significant": r["significant"]}
        return None

    def larger(self, s) -> str | None:
        bigger = sorted((self.sizes[t], t) for t in self.students if t in self.sizes and s in self.sizes
                        and self.sizes[t] > self.sizes[s])
        return bigger[0][1] if bigger else None

    def tasks(self, req: Requirement) -> list[str]:
        all_tasks = sorted({t for ts in self.metric_tasks.values() for t in ts})
        chosen = all_tasks if req.tasks == "*" else [t for t in req.tasks if t in all_tasks]
        return [t for t in chosen if t in self.metric_tasks.get(req.metric_for(t), ())]

    def why_unmeasured(self, req: Requirement, inst: list[dict]) -> str:
        missing = [m for m in (req.method, req.other) if m not in self.methods]
        if missing:
            return f"method(s) {', '.join(missing)} not in the run"
        if not self.tasks(req):
            where = "any task" if req.tasks == "*" else "tasks " + ", ".join(req.tasks)
            return f"{req.metric if isinstance(req.metric, str) else 'the primary metric'} not measured on {where}"
        if inst:
            return inst[0]["reason"] + (f" (and {len(inst) - 1} more)" if len(inst) > 1 else "")
        if req.other_student == "larger":
            return "no larger student with a known size (student_sizes)"
        return f"no comparison {req.method} vs {req.other}"


def _valued(d: dict | None) -> bool:
    """A comparison record with a delta and a CI (a statistic that could not be computed on these
    scores, e.g. a recomputed metric without its per-example inputs, has none: not measured)."""
    return d is not None and all(d.get(k) is not None and d[k] == d[k] for k in ("delta", "ci_low", "ci_high"))


def _instances(run: _Run, req: Requirement) -> list[dict]:
    out = []
    students = sorted(run.student_of.get(req.method, ()), key=str)
    for task, s in itertools.product(run.tasks(req), students):
        s2 = s if req.other_student == "same" else run.larger(s)
        if req.other_student == "larger" and s2 is None:
            continue
        metric = req.metric_for(task)
        ev = {"requirement": req.label(), "task": task, "student": s, "other_student": s2, "metric": metric,
              "method": req.method, "other": req.other, "expect": req.expect, "margin": req.margin,
              "vs_metric": req.vs_metric, "required": req.required}
        if s2 in run.sizes and s in run.sizes:
            ev["size_ratio"] = run.sizes[s2] / run.sizes[s]
        d = run.lookup(task, metric, (s, req.method), (s2, req.other))
        vs = run.lookup(task, req.vs_metric, (s, req.method), (s2, req.other)) if req.vs_metric else None
        if not _valued(d) or (req.vs_metric and not _valued(vs)):
            a, b = (f"{m}@{x}" if x is not None else m for m, x in ((req.method, s), (req.other, s2)))
            absent = metric if not _valued(d) else req.vs_metric
            got = "no comparison" if (d if absent == metric else vs) is None else "no value for the comparison"
            out.append({**ev, "status": "missing", "reason": f"{got} {a} vs {b} on {task}/{absent}"})
            continue
        status, why = _judge(req, d, vs)
        ev.update(d, status=status, reason=why)
        if vs:
            ev.update({f"vs_{k}": v for k, v in vs.items()})
        out.append(ev)
    return out


def needed_pairs(models: Iterable[str], claims: Iterable[Claim | str] | None = None, *,
                 student_sizes: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """Cross-student (model_a, model_b) pairs the claims need (other_student="larger"), to pass to
    compare_table(extra_pairs=...): '<s>/<method>' vs '<next larger student>/<other>'."""
    models, sizes = list(models), dict(student_sizes or {})
    students = sorted({m.rpartition("/")[0] for m in models if "/" in m and m.rpartition("/")[0] in sizes},
                      key=lambda s: sizes[s])
    out = []
    for c in _chosen(claims):
        for r in c.requirements:
            if r.other_student != "larger":
                continue
            for s, t in zip(students, students[1:]):
                pair = (f"{s}/{r.method}", f"{t}/{r.other}")
                if sizes[t] > sizes[s] and set(pair) <= set(models) and pair not in out:
                    out.append(pair)
    return out


def _chosen(claims: Iterable[Claim | str] | None) -> list[Claim]:
    names = sorted(CLAIMS.names(), key=_natural) if claims is None else claims
    return [CLAIMS.get(c, "claims") if isinstance(c, str) else c for c in names]


def evaluate_claims(comparisons: Sequence[dict], claims: Iterable[Claim | str] | None = None, *,
                    student_sizes: Mapping[str, float] | None = None) -> list[dict]:
    """A verdict per claim (all registered ones by default) from compare_table records.

    Records need task, metric, method, baseline, delta, ci_low, ci_high, p_adjusted, significant
    and, for several students, student / baseline_student. `student_sizes` ({student: parameter
    count}) orders students for other_student="larger". Returns one finding per claim: id, text,
    source, verdict, reason, notes, evidence (one dict per expanded requirement instance).
    """
    run = _Run(comparisons, student_sizes)
    out = []
    for c in _chosen(claims):
        evidence, unmeasured = [], []
        for req in c.requirements:
            inst = _instances(run, req)
            evidence += inst
            if not any(e["status"] != "missing" for e in inst):
                why = run.why_unmeasured(req, inst)
                unmeasured.append((req, why))
                if not inst:
                    evidence.append({"requirement": req.label(), "required": req.required, "status": "missing",
                                     "reason": why})
        required = [e for e in evidence if e["required"]]
        bad = [e for e in evidence if e["status"] == "contradicted"]
        blank = [f"{r.label()}: {why}" for r, why in unmeasured if r.required]
        if len(run.students) < c.min_students:
            verdict, reason = "not measured", f"needs {c.min_students} students, the run has {len(run.students)}"
        elif bad:
            verdict, reason = "contradicted", "; ".join(_short(e) for e in bad)
        elif len(blank) == sum(r.required for r in c.requirements):
            verdict, reason = "not measured", "; ".join(blank)
        elif all(e["status"] == "supported" for e in required):
            verdict, reason = "supported", f"all {len(required)} required comparisons as claimed"
        else:
            open_ = [_short(e) for e in required if e["status"] != "supported" and "task" in e]
            verdict, reason = "inconclusive", "; ".join(blank + open_[:6]) + (" ..." if len(open_) > 6 else "")
        out.append({"id": c.id, "text": c.text, "source": c.source, "verdict": verdict, "reason": reason,
                    "notes": c.notes, "evidence": evidence})
    return out


def _natural(name: str) -> list:
    """C2 before C10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _short(e: dict) -> str:
    where = "/".join(str(x) for x in (e.get("task"), e.get("student")) if x is not None)
    return f"{e['requirement']}{' [' + where + ']' if where else ''}: {e['status']} ({e['reason']})"


def _fmt(x: Any, spec: str = "+.2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def findings_markdown(findings: Sequence[dict]) -> str:
    """A summary table (claim, verdict, reason), then each claim's evidence table."""
    lines = ["| claim | verdict | reason |", "|---|---|---|"]
    lines += [f"| {f['id']}: {f['text']} | **{f['verdict']}** | {f['reason']} |" for f in findings]
    for f in findings:
        lines += ["", f"### {f['id']}: {f['text']}", "", f"**{f['verdict']}** – {f['reason']}"
                  + (f" (source: {f['source']})" if f["source"] else "")]
        if f["notes"]:
            lines += ["", f"_{f['notes']}_"]
        rows = [e for e in f["evidence"] if "task" in e]
        if rows:
            lines += ["", "| requirement | task | student | delta [CI] | p adj. | status |", "|---|---|---|---|---|---|"]
            lines += [f"| {e['requirement']} | {e['task']} | {e['student'] or '–'}"
                      + (f" vs {e['other_student']}" if e["other_student"] != e["student"] else "")
                      + f" | {_fmt(e.get('delta'))} [{_fmt(e.get('ci_low'))}, {_fmt(e.get('ci_high'))}]"
                      + f" | {_fmt(e.get('p_adjusted'), '.3g')} | {e['status']} |" for e in rows]
    return "\n".join(lines) + "\n"


def findings_json(findings: Sequence[dict]) -> list[dict]:
    """Plain JSON types (NaN -> None); json.dumps(findings_json(f)) always works."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, bool) or x is None or isinstance(x, str):
            return x
        if isinstance(x, (int, float)) or hasattr(x, "item"):
            v = x.item() if hasattr(x, "item") else x
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return str(x)
    return json.loads(json.dumps(clean(list(findings))))


def claim_spec(claim: Claim) -> dict:
    """A registered claim as plain data (for a report's appendix)."""
    return findings_json([asdict(claim)])[0]
