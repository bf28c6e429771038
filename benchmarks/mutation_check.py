"""Seed plausible bugs one at a time and check that the targeted tests catch each (a kill).

    python benchmarks/mutation_check.py              # every mutant, report to stdout + JSON
    python benchmarks/mutation_check.py kd minillm   # only mutants whose id contains a word

Each mutant is one textual edit (or a few, applied together) to a copy of the committed tree
(`git archive HEAD`), never to the checkout; the copy runs `pytest -x` on the tests that own the
code, with one torch thread. A mutant whose text is not found exactly once is an error, not a
survivor, so the list cannot rot silently. Results: benchmarks/results/mutation_check.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, machine_info

METHODS_T = ["tests/methods/test_step_one.py", "tests/methods/test_methods.py"]
DIV_T = ["tests/methods/test_divergences.py", "tests/methods/test_gradients.py", "tests/methods/test_step_one.py"]
ADV_T = ["tests/methods/test_advantages.py", "tests/methods/test_gradients.py", "tests/methods/test_step_one.py"]
SAMPLE_T = ["tests/engine/test_sampling_filters.py", "tests/engine/test_sampling.py",
            "tests/engine/test_sampling_fast.py"]
CACHE_T = ["tests/e2e/test_cache_invalidation.py"]
TCACHE_T = ["tests/engine/test_teacher_cache.py"]
METRIC_T = ["tests/metrics"]
LEAN_T = ["tests/engine/test_lean.py"]
TRIM_T = ["tests/engine/test_trimmed.py"]
CHUNK_T = ["tests/engine/test_chunked.py", "tests/engine/test_chunked_combined.py"]
ROW_T = ["tests/engine/test_row_sampling.py"]

# (id, file, [(old, new), ...], tests)
MUTANTS = [
    # --- divergences and the shared reductions
    ("div-reverse-kl-swapped", "kdbench/divergences.py",
     [('''log_q, log_p = _log_probs(student_logits, teacher_logits)
    return _kl_from_log(log_q, log_p, positive(log_q, log_p))''', '''log_q, log_p = _log_probs(student_logits, teacher_logits)
    return _kl_from_log(log_p, log_q, positive(log_q, log_p))''')], DIV_T),
    ("div-js-beta-flipped", "kdbench/divergences.py",
     [("log_m = _log_mix(log_p, log_q, beta, pos)", "log_m = _log_mix(log_p, log_q, 1.0 - beta, pos)")], DIV_T),
    ("div-tvd-no-half", "kdbench/divergences.py",
     [("return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)", "return (log_p.exp() - log_q.exp()).abs().sum(-1)")],
     DIV_T),
    ("div-skew-rkl-mixture-swapped", "kdbench/divergences.py",
     [("_kl_from_log(log_q, _log_mix(log_q, log_p, alpha, pos), pos)", "_kl_from_log(log_q, _log_mix(log_p, log_q, alpha, pos), pos)")],
     DIV_T),
    ("div-masked-mean-over-all-positions", "kdbench/divergences.py",
     [("    denom = m.sum()\n", "    denom = torch.ones_like(m).sum()\n")], DIV_T),
    # stop-gradients: the value stays, the update breaks
    # (detaching log w inside the log-ratio instead would be an equivalent mutant: sum_v dw_v = 0)
    ("div-kl-weight-detached", "kdbench/divergences.py",
     [("    return lw.exp() * (lw - lo)\n", "    return lw.exp().detach() * (lw - lo)\n")], DIV_T),
    # the guarded path alone (entries of probability 0): its selects must keep the formula's terms
    ("div-kl-guard-drops-the-terms", "kdbench/divergences.py",
     [("return torch.where(ok, _kl_terms(lw, lo), zero).sum(-1)", "return torch.where(ok, zero, zero).sum(-1)")],
     DIV_T),
    ("div-mix-guard-drops-an-input", "kdbench/divergences.py",
     [("out = torch.logaddexp(torch.where(both, zero, x), torch.where(both, zero, y))",
       "out = torch.logaddexp(torch.where(both, zero, x), torch.where(both, zero, x))")], DIV_T),
    ("div-skew-mixture-detached", "kdbench/divergences.py",
     [("_kl_from_log(log_q, _log_mix(log_q, log_p, alpha, pos), pos)", "_kl_from_log(log_q, _log_mix(log_q, log_p, alpha, pos).detach(), pos)")],
     DIV_T),
    ("ce-normalised-per-sequence", "kdbench/token_ops.py",
     [("return -(gather_logprobs(logits, labels) * mask).sum() / mask.sum().clamp(min=1)",
       "return -(gather_logprobs(logits, labels) * mask).sum() / mask.shape[0]")], METHODS_T),
    # --- MiniLLM's advantage maths
    ("adv-reward-sign", "kdbench/advantages.py",
     [("r = teacher_logp.float() - student_logp.float()", "r = student_logp.float() - teacher_logp.float()")], ADV_T),
    ("adv-gamma-ignored", "kdbench/advantages.py",
     [("g_next = r[..., t + 1] + gamma * g_next", "g_next = r[..., t + 1] + g_next")], ADV_T),
    ("adv-length-norm-always", "kdbench/advantages.py", [("    if length_norm:\n", "    if True:\n")], ADV_T),
    ("adv-whiten-no-centring", "kdbench/advantages.py",
     [("centred = torch.where(valid, x - mean, torch.zeros_like(x))", "centred = torch.where(valid, x, torch.zeros_like(x))")],
     ADV_T),
    ("adv-ppo-ratio-detached", "kdbench/advantages.py",
     [("    ratio = log_ratio.exp()\n", "    ratio = log_ratio.detach().exp()\n")], ADV_T),
    ("adv-ppo-min-not-max", "kdbench/advantages.py",
     [("torch.maximum(-adv * ratio, -adv * ratio.clamp", "torch.minimum(-adv * ratio, -adv * ratio.clamp")], ADV_T),
    # --- method update rules
    ("minillm-no-importance-weights", "methods/minillm.py",
     [('importance_weights=batch.extras.get("w"))', "importance_weights=None)")], METHODS_T),
    ("minillm-clip-hardcoded", "methods/minillm.py", [('mask, cfg.clip,', "mask, 0.2,")], METHODS_T),
    ("minillm-pg-times-zero", "methods/minillm.py", [("            loss = pg\n", "            loss = 0 * pg\n")], METHODS_T),
    ("minillm-single-step-forward-kl", "methods/minillm.py",
     [("single = ctx.divergence(reverse_kl, s, ctx.teacher_outputs(batch), mask)",
       "single = ctx.divergence(forward_kl, s, ctx.teacher_outputs(batch), mask)")],
     METHODS_T),
    ("minillm-lm-coef-ignored", "methods/minillm.py", [("loss = loss + cfg.lm_coef * pt", "loss = loss + pt")], METHODS_T),
    ("minillm-gamma-hardcoded", "methods/minillm.py", [("cfg.gamma, cfg.length_norm", "0.95, cfg.length_norm")], METHODS_T),
    ("minillm-mix-alpha-hardcoded", "methods/minillm.py",
     [("alpha = cfg.teacher_mix_alpha if cfg.teacher_mix else 0.0", "alpha = 0.2 if cfg.teacher_mix else 0.0")], METHODS_T),
    ("kd-ratio-forced-1", "methods/kd.py",
     [("r, T = self.config.kd_ratio, self.config.temperature", "r, T = 1.0, self.config.temperature")], METHODS_T),
    ("kd-kl-dropped", "methods/kd.py", [("div_weight=r * T * T, temperature=T", "div_weight=0.0, temperature=T")],
     METHODS_T),
    ("kd-no-T-squared", "methods/kd.py", [("div_weight=r * T * T, temperature=T", "div_weight=r, temperature=T")],
     METHODS_T),
    ("seqkd-trains-on-gold", "methods/seqkd.py",
     [("ctx.fit(loss_fn, ctx.gold_batches(data))", "ctx.fit(loss_fn, ctx.gold_batches())")], METHODS_T),
    ("single-step-on-gold", "methods/single_step.py",
     [('ctx.policy_batches("student")', 'ctx.policy_batches("gold")')], METHODS_T),
    ("js-data-source-ignored", "methods/js.py",
     [("ctx.policy_batches(self.config.data)", 'ctx.policy_batches("student")')], METHODS_T),
    ("gkd-temperature-ignored", "methods/gkd.py",
     [("seed=ctx.step_seed(k),\n                                                     cfg=scfg))",
       "seed=ctx.step_seed(k),\n                                                     cfg=ctx.sampling))")], METHODS_T),
    ("gkd-beta-hardcoded", "methods/gkd.py", [("beta=cfg.beta)", "beta=0.5)")], METHODS_T),
    ("gkd-lambda-hardcoded", "methods/gkd.py", [("on_policy = rng.random() < cfg.lmbda", "on_policy = rng.random() < 0.5")],
     METHODS_T),
    ("distillm-sgo-schedule-increasing", "methods/distillm.py",
     [("return threshold * (1 - step / total)", "return threshold * step / total")], METHODS_T),
    ("distillm-alpha-hardcoded", "methods/distillm.py", [("alpha=cfg.skew_alpha)", "alpha=0.1)")], METHODS_T),
    ("distillm-ratio-swapped", "methods/distillm.py",
     [("loss = cfg.kd_ratio * d + (1 - cfg.kd_ratio) * ce", "loss = (1 - cfg.kd_ratio) * d + cfg.kd_ratio * ce")],
     METHODS_T),
    ("ranking-order-reversed", "methods/ranking.py",
     [("better = (teacher_scores[:, None] > teacher_scores[None, :])",
       "better = (teacher_scores[:, None] < teacher_scores[None, :])")], METHODS_T),
    ("ranking-margin-ignored", "methods/ranking.py", [("group, cfg.margin)", "group, 0.0)")], METHODS_T),
    ("ranking-sft-coef-ignored", "methods/ranking.py", [("rank + cfg.sft_coef * sft", "rank + sft")], METHODS_T),
    ("trainer-accumulation-mean-of-means", "kdbench/trainer.py",
     [("self.accelerator.backward(out.loss * (w / total))", "self.accelerator.backward(out.loss / len(micro))")],
     ["tests/engine/test_trainer.py"]),
    # --- the sampler
    ("sample-top-p-ignored", "kdbench/sampling.py", [("    if cfg.top_p < 1.0:\n", "    if False:\n")], SAMPLE_T),
    ("sample-top-k-ignored", "kdbench/sampling.py",
     [("if cfg.top_k and cfg.top_k < logits.shape[-1]:", "if False:")], SAMPLE_T),
    ("sample-temperature-multiplies", "kdbench/sampling.py",
     [("logits = logits.float() / cfg.temperature", "logits = logits.float() * cfg.temperature")], SAMPLE_T),
    ("sample-top-p-drops-crossing-token", "kdbench/sampling.py",
     [("remove = cum - sorted_logits.softmax(-1) > cfg.top_p", "remove = cum > cfg.top_p")], SAMPLE_T),
    ("sample-teacher-unfiltered", "kdbench/sampling.py",
     [("p_logp = torch.log_softmax(filter_logits(t_logits, cfg), -1)\n            # log((1-a) q + a p)",
       "p_logp = torch.log_softmax(t_logits, -1)\n            # log((1-a) q + a p)")],
     SAMPLE_T),
    ("sample-mixture-weights-swapped", "kdbench/sampling.py",
     [("q_logp + torch.log1p(torch.tensor(-mix_alpha)), p_logp + torch.log(torch.tensor(mix_alpha))",
       "q_logp + torch.log(torch.tensor(mix_alpha)), p_logp + torch.log1p(torch.tensor(-mix_alpha))")], SAMPLE_T),
    ("sample-decode-mask-not-extended", "kdbench/sampling.py",
     [("            self.mask4[:, 0, 0, self.n] = True\n", "            pass\n")], SAMPLE_T),
    ("sample-ngram-ban-wrong-prefix", "kdbench/sampling.py",
     [("seen.setdefault(tuple(seq[len(seq) - n: -1]), set()).add(y)",
       "seen.setdefault(tuple(seq[len(seq) - n + 1:]), set()).add(y)")], SAMPLE_T),
    # --- metrics
    ("rouge-min-over-references", "kdbench/metrics/rouge.py",
     [('return max(scorer.score(ref, prediction)["rougeL"].fmeasure', 'return min(scorer.score(ref, prediction)["rougeL"].fmeasure')],
     METRIC_T),
    ("rouge-no-stemmer", "kdbench/metrics/rouge.py", [("use_stemmer=True", "use_stemmer=False")], METRIC_T),
    ("dist4-is-dist3", "kdbench/metrics/diversity.py",
     [("vals = dist_n_per_response(ctx.predictions, 4)", "vals = dist_n_per_response(ctx.predictions, 3)")], METRIC_T),
    ("ece-unweighted-bins", "kdbench/metrics/calibration.py",
     [("err += row[\"count\"] / total * abs(", "err += 1 / 10 * abs(")], METRIC_T),
    ("lm-loss-mean-of-rows", "kdbench/metrics/lm_loss.py",
     [("    return sum(nll) / n\n", "    return sum(a / max(b, 1) for a, b in zip(nll, tokens)) / len(tokens)\n")], METRIC_T),
    # --- cache keys
    ("key-train-without-method-config", "kdbench/cells.py",
     [('"method_config": dataclasses.asdict(method.config),\n', "\n")], CACHE_T),
    ("key-train-without-budget", "kdbench/cells.py",
     [('                  "train": train_key(train, method.requires_teacher),\n', "")], CACHE_T),
    ("key-eval-without-protocol", "kdbench/cells.py", [('"eval": protocol, "seed": seed', '"seed": seed')], CACHE_T),
    ("key-train-ignores-teacher-samples", "kdbench/cells.py",
     [("return all(key == self.stages.teacher_samples_key() for name", "return all(True or key == 0 for name")], CACHE_T),
    ("key-eval-with-all-seeds", "kdbench/cells.py",
     [('protocol = {k: v for k, v in to_dict(ev).items() if k != "seeds"}', "protocol = to_dict(ev)")], CACHE_T),
    # --- the teacher cache (kdbench/teacher_cache.py, teacher_store.py)
    ("tcache-reads-rollouts", "kdbench/teacher_store.py",
     [("        if not is_fixed(batch):\n            return None\n", "")], TCACHE_T),
    ("tcache-k-not-in-stage-key", "kdbench/teacher_store.py", [('"k": self.k, "vocab"', '"vocab"')], TCACHE_T),
    ("tcache-teacher-not-in-stage-key", "kdbench/stage_data.py", [('**spec, "teacher": self.teacher_model()[1], ', "**spec, ")],
     CACHE_T),
    ("tcache-tail-mass-dropped", "kdbench/teacher_cache.py",
     [("other = tail.float() - math.log(max(vocab - k, 1))", "other = tail.float() - float('inf')")], TCACHE_T),
    ("tcache-sft-key-reads-the-cache", "kdbench/stages.py",
     [('"train": train_key(train, teacher=False), "data"', '"train": train_key(train), "data"')], CACHE_T),
    # --- the fast paths (kdbench/lean, hidden.trimmed, chunked._FusedChunks, row streams)
    ("lean-gpt2-ln-bias-dropped", "kdbench/lean/gpt2.py",
     [("F.layer_norm(x, (C,), ln1_w, ln1_b, eps1)", "F.layer_norm(x, (C,), ln1_w, None, eps1)")], LEAN_T),
    ("lean-llama-rope-sign", "kdbench/lean/llama.py",
     [("torch.cat((-x[..., half:], x[..., :half]), dim=-1)", "torch.cat((x[..., half:], -x[..., :half]), dim=-1)")],
     LEAN_T),
    ("lean-llama-rms-eps-ignored", "kdbench/lean/llama.py",
     [("F.rms_norm(x.float(), x.shape[-1:], eps=eps)", "F.rms_norm(x.float(), x.shape[-1:], eps=1e-3)")], LEAN_T),
    ("lean-decode-position-frozen", "kdbench/lean/decode.py",
     [("self.next_pos = self.next_pos + 1", "self.next_pos = self.next_pos")], LEAN_T),
    ("lean-decode-mask-column-off", "kdbench/lean/decode.py",
     [("self.bias[:, 0, 0, self.n] = 0.0", "self.bias[:, 0, 0, self.n - 1] = 0.0")], LEAN_T),
    ("lean-positions-count-padding", "kdbench/lean/decode.py",
     [("pos = (att.cumsum(-1) - 1).clamp(min=0)", "pos = torch.arange(L, device=dev).expand(B, L)")], LEAN_T),
    ("trim-groups-without-call-cost", "kdbench/hidden.py",
     [("c = best[i] + (j - i) * ls[j - 1] + call_cost", "c = best[i] + (j - i) * ls[j - 1]")], TRIM_T),
    ("trim-groups-cut-to-shortest-row", "kdbench/hidden.py",
     [("c = best[i] + (j - i) * ls[j - 1] + call_cost", "c = best[i] + (j - i) * ls[i] + call_cost")], TRIM_T),
    ("chunk-head-grad-last-chunk-only", "kdbench/chunked.py",
     [("grads[1][:V].addmm_(g.t(), h)", "grads[1][:V].copy_(g.t() @ h)")], CHUNK_T),
    ("chunk-hidden-grad-first-rows", "kdbench/chunked.py",
     [("grads[0][i:j] = g @ w", "grads[0][: j - i] = g @ w")], CHUNK_T),
    ("row-stream-rereads-after-refill", "kdbench/row_sampling.py",
     [("u = self.stream.gather(1, self.used[:, None]).squeeze(1)",
       "u = self.stream.gather(1, self.used[:, None] % self.CHUNK).squeeze(1)")], ROW_T),
    ("row-masked-draw-consumes", "kdbench/row_sampling.py", [("self.used += take", "self.used += 1")], ROW_T),
]


def snapshot(dest: Path) -> None:
    """The committed tree (HEAD) into `dest`: mutants never touch the checkout."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def run_mutant(repo: Path, mid: str, path: str, edits, tests, timeout: int) -> dict:
    f = repo / path
    original = f.read_text()
    text = original
    for old, new in edits:
        n = text.count(old)
        if n != 1:
            return {"id": mid, "status": "error", "why": f"{path}: edit text found {n} times: {old[:60]!r}"}
        text = text.replace(old, new)
    f.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        status = "killed" if p.returncode != 0 else "survived"
        tail = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")][:1]
    except subprocess.TimeoutExpired:
        status, tail = "killed (timeout)", []
    finally:
        f.write_text(original)
    return {"id": mid, "status": status, "seconds": round(time.time() - t0, 1), "caught_by": tail[0] if tail else "",
            "tests": tests}


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or any(w in m[0] for w in argv)]
    results = []
    with tempfile.TemporaryDirectory(prefix="kdbench-mutants-") as tmp:
        repo = Path(tmp)
        snapshot(repo)
        base = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *sorted({t for m in chosen for t in m[3]})], cwd=repo, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if base.returncode != 0:
            print(base.stdout[-3000:])
            raise SystemExit("the unmutated tree fails its tests: fix that first")
        for mid, path, edits, tests in chosen:
            r = run_mutant(repo, mid, path, edits, tests, timeout=900)
            results.append(r)
            print(f"{r['status']:>16}  {mid:<38} {r.get('seconds', '')}s  {r.get('caught_by') or r.get('why', '')}",
                  flush=True)
    errors = [r for r in results if r["status"] == "error"]
    scored = [r for r in results if r["status"] != "error"]
    killed = [r for r in scored if r["status"].startswith("killed")]
    rate = len(killed) / max(len(scored), 1)
    print(f"\nkill rate {len(killed)}/{len(scored)} = {100 * rate:.1f}%"
          + (f"; {len(errors)} mutants did not apply" if errors else ""))
    for r in scored:
        if r["status"] == "survived":
            print(f"  survived: {r['id']}")
    if not argv:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "mutation_check.json").write_text(json.dumps(
            {"machine": machine_info(), "kill_rate": rate, "killed": len(killed), "total": len(scored),
             "results": results}, indent=1))
    return 1 if errors or rate < 0.95 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
