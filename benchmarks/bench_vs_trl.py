"""The same on-policy distillation in kdbench's `gkd` and in TRL's trainers: steps/s, side by side.

Three sides: kdbench `gkd`, TRL's `DistillationTrainer` (trl/trainer/distillation_trainer.py, TRL 1.16: the
trainer TRL now points distillation users to) and TRL's `GKDTrainer` (trl.experimental.gkd).

    python benchmarks/bench_vs_trl.py                  # 3 alternating rounds of 12 steps each
    python benchmarks/bench_vs_trl.py --rounds 5 --steps 20 --venv /tmp/trl-venv

Setting (identical on both sides): a GPT-2 student (64 wide, 2 layers) and teacher (128 wide,
4 layers), randomly initialised with fixed seeds and saved once, a word-level tokenizer, the same
256 "reverse the words" prompts, batch 16, 24 new tokens, sampling temperature 0.9, top-k 0,
lmbda 1 (every step on student samples), beta 0.5 (JSD), AdamW lr 1e-4, 1 torch thread, CPU.
A step = sample the batch's rollouts with the student, score them with teacher and student, JSD,
backward, optimizer step. The models are untrained, so rollouts rarely stop early: both sides
generate the full 24 tokens nearly always.

TRL runs in its own virtual environment (created on first use:
`python3 -m venv <dir> && <dir>/bin/pip install torch==2.13.0 trl`, the torch pin keeps the local
CPU wheel), never in kdbench's. Runs alternate (kdbench, TRL, kdbench, TRL, ...) in fresh
processes so load changes on the shared machine hit both; steps/s is measured over steps 2..N
(the first step pays one-time setup) and the ratio is of the medians. Goal (issue 17): kdbench >= 2x TRL
DistillationTrainer.
Results: benchmarks/results/bench_vs_trl.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, python, ratio_ci, write_results  # noqa: E402

SETTING = {"batch_size": 16, "max_new_tokens": 24, "temperature": 0.9, "lmbda": 1.0, "beta": 0.5, "lr": 1e-4,
           "n_examples": 256, "seed": 0}
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdbench" / "trl-venv"


def make_assets(work: Path) -> None:
    """Tokenizer, models and data on disk, read by both sides."""
    import random

    import torch

    from kdbench.models import build_preset_model, build_word_tokenizer

    rng = random.Random(SETTING["seed"])
    words = [f"w{i}" for i in range(200)]
    tok = build_word_tokenizer(["reverse", ":", "="] + words)
    # Chat template for TRL's ChatML collator: the text is the turns joined by spaces, so the
    # templated prompt tokenises exactly as kdbench's prompt (word-level, whitespace split).
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %} {% endif %}")
    tok.save_pretrained(work / "tok")
    rows = []
    for _ in range(SETTING["n_examples"]):
        ws = rng.sample(words, rng.randint(3, 8))
        rows.append({"prompt": "reverse : " + " ".join(ws) + " =", "completion": " ".join(reversed(ws))})
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_pos = 64
    for name, preset, seed in (("student", "gpt2-toy-s", 1), ("teacher", "gpt2-toy-m", 2)):
        m = build_preset_model(preset, tok, n_pos, seed)
        m.save_pretrained(work / name)
    del torch


class _StepTimer:
    def __init__(self):
        self.t: list[float] = []

    def __call__(self, *a, **k):
        self.t.append(time.perf_counter())

    def steps_per_s(self) -> float:
        return (len(self.t) - 1) / (self.t[-1] - self.t[0])  # from the end of step 1 to the end of step N


class _GenTimer:
    """Seconds spent generating rollouts, counted over the timed steps only (those that begin after the
    first step's end, as steps/s is)."""

    def __init__(self, steps: _StepTimer):
        self.steps, self.spent = steps, 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if self.steps.t:  # the first step has ended: this generation belongs to a timed step
                self.spent += time.perf_counter() - t
            return out
        return timed

    def per_step(self) -> float:
        return self.spent / max(len(self.steps.t) - 1, 1)


def run_kdbench(work: Path, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from kdbench.config import TrainConfig
    from kdbench.method import MethodContext, make_method
    from kdbench.models import load_model, load_tokenizer
    from kdbench.plugins import load_plugins
    from kdbench.schema import Example

    load_plugins()
    tok = load_tokenizer(str(work / "tok"))
    rows = [json.loads(line) for line in (work / "data.jsonl").read_text().splitlines()]
    exs = [Example(str(i), "reverse", r["prompt"], r["prompt"], [r["completion"]]) for i, r in enumerate(rows)]
    student, teacher = load_model(str(work / "student")), load_model(str(work / "teacher"))
    cfg = TrainConfig(steps=steps, batch_size=SETTING["batch_size"], lr=SETTING["lr"], warmup_steps=0,
                      schedule="linear", min_lr=0.0, weight_decay=0.0, clip_grad=1.0, log_every=1,
                      seed=SETTING["seed"])  # TRL defaults: linear decay, no weight decay, clip 1.0
    ctx = MethodContext(student=student, teacher=teacher, tokenizer=tok, train_examples=exs, train_cfg=cfg,
                        max_length=16 + SETTING["max_new_tokens"], max_prompt_length=16, run_dir=None,
                        device="cpu", method_name="gkd", progress=False)
    ctx.vocab_size = len(tok)
    timer = _StepTimer()
    ctx.fit = lambda loss_fn, batches: ctx.trainer.fit(ctx.student, loss_fn, batches, on_step=timer)  # noqa: E731
    gen = _GenTimer(timer)
    ctx.sample = gen.wrap(ctx.sample)
    method = make_method("gkd", {"lmbda": SETTING["lmbda"], "beta": SETTING["beta"],
                                 "temperature": SETTING["temperature"]})
    t0 = time.perf_counter()
    method.train(ctx)
    return {"side": "kdbench", "steps": steps, "steps_per_s": timer.steps_per_s(),
            "generation_s_per_step": gen.per_step(), "total_s": time.perf_counter() - t0,
            "generated_tokens_per_step": ctx.counters.get("generated_tokens", 0) / steps}


TRL_WORKER = textwrap.dedent('''
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    work, steps, S = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(work + "/tok")
    rows = [json.loads(l) for l in open(work + "/data.jsonl")]
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                          {"role": "assistant", "content": r["completion"]}]} for r in rows])
    student = AutoModelForCausalLM.from_pretrained(work + "/student")
    teacher = AutoModelForCausalLM.from_pretrained(work + "/teacher")

    class Timer(TrainerCallback):
        t = []
        gen = []
        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    args = GKDConfig(output_dir=work + "/trl-out", per_device_train_batch_size=S["batch_size"],
                     gradient_accumulation_steps=1, max_steps=steps, learning_rate=S["lr"], lmbda=S["lmbda"],
                     beta=S["beta"], temperature=S["temperature"], max_new_tokens=S["max_new_tokens"],
                     max_length=16 + S["max_new_tokens"], seed=S["seed"], logging_steps=10**6, save_strategy="no",
                     report_to="none", use_cpu=True, dataloader_num_workers=0, bf16=False, fp16=False,
                     disable_dropout=True, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                     lr_scheduler_type="linear", disable_tqdm=True)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t = Timer.t
    print(json.dumps({"side": "trl", "steps": steps, "steps_per_s": (len(t) - 1) / (t[-1] - t[0]),
                      "total_s": time.perf_counter() - t0}))
''')


# TRL's current distillation trainer (trl/trainer/distillation_trainer.py, TRL 1.16): always on-policy (lmbda 1),
# generalized JSD over a chunked lm_head, generation through transformers' `generate` (use_vllm off). Its
# `temperature` shapes both generation and the loss, where GKD (and kdbench's gkd) uses it for generation only:
# the config keeps temperature 1 for the loss and sets 0.9 for generation through generation_kwargs, so both sides
# sample and score the same way. TRL 1.16 defaults changed here: gradient_checkpointing (on) and bf16 (on) off,
# as kdbench runs fp32 without checkpointing.
DISTILL_WORKER = textwrap.dedent('''
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    work, steps, S = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(work + "/tok")
    tok.padding_side = "left"
    rows = [json.loads(l) for l in open(work + "/data.jsonl")]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    student = AutoModelForCausalLM.from_pretrained(work + "/student")
    teacher = AutoModelForCausalLM.from_pretrained(work + "/teacher")

    class Timer(TrainerCallback):
        t = []
        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    # generation time over the timed steps (after step 1 ends), as kdbench's worker counts it
    gen_spent = [0.0]
    real_generate = student.generate
    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = real_generate(*a, **k)
        if Timer.t:
            gen_spent[0] += time.perf_counter() - t
        return out
    student.generate = timed_generate

    args = DistillationConfig(output_dir=work + "/trl-distill-out", per_device_train_batch_size=S["batch_size"],
                              gradient_accumulation_steps=1, max_steps=steps, learning_rate=S["lr"], beta=S["beta"],
                              temperature=1.0, generation_kwargs={"temperature": S["temperature"]}, top_k=0, top_p=1.0,
                              max_completion_length=S["max_new_tokens"], seed=S["seed"], logging_steps=10**6,
                              save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
                              bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
                              warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear",
                              disable_tqdm=True, use_vllm=False)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  processing_class=tok, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t = Timer.t
    print(json.dumps({"side": "trl-distill", "steps": steps, "steps_per_s": (len(t) - 1) / (t[-1] - t[0]),
                      "generation_s_per_step": gen_spent[0] / max(len(t) - 1, 1), "total_s": time.perf_counter() - t0}))
''')


def ensure_trl_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if py.exists():
        ok = subprocess.run([str(py), "-c", "import trl.experimental.gkd; from trl import DistillationTrainer"],
                            capture_output=True).returncode == 0
        if ok:
            return py
    print(f"creating {venv} with torch==2.13.0 and trl from PyPI (a few minutes) ...", file=sys.stderr, flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "trl==1.16.*"], check=True)
    return py


def _last_json(p: subprocess.CompletedProcess, what: str) -> dict:
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:2] == ["--kdbench-worker"]:
        print(json.dumps(run_kdbench(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating kdbench/TRL pairs (default 3)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help=f"TRL's virtual environment (default {DEFAULT_VENV})")
    ap.add_argument("--sides", default="kdbench,trl-distill,trl",
                    help="comma-separated: kdbench, trl-distill (DistillationTrainer), trl (GKDTrainer)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    trl_py = ensure_trl_venv(Path(args.venv))
    trl_ver = subprocess.run([str(trl_py), "-c", "import trl, transformers, torch; "
                              "print(trl.__version__, transformers.__version__, torch.__version__)"],
                             capture_output=True, text=True).stdout.split()
    work = Path(tempfile.mkdtemp(prefix="kdbench-vs-trl-"))
    make_assets(work)
    (work / "trl_worker.py").write_text(TRL_WORKER)
    (work / "distill_worker.py").write_text(DISTILL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    sides = [s.strip() for s in args.sides.split(",")]
    runs = []
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        for side in sides:
            if side == "kdbench":
                cmd = [python(), str(Path(__file__).resolve()), "--kdbench-worker", str(work), str(args.steps)]
            else:
                worker = "distill_worker.py" if side == "trl-distill" else "trl_worker.py"
                cmd = [str(trl_py), str(work / worker), str(work), str(args.steps), json.dumps(SETTING)]
            res = _last_json(subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT), side)
            res.update(side=side, round=r + 1, loadavg=list(os.getloadavg()))
            print(f"round {r + 1} {side}: {res['steps_per_s']:.3f} steps/s", file=sys.stderr, flush=True)
            runs.append(res)
    med = {s: statistics.median(x["steps_per_s"] for x in runs if x["side"] == s) for s in sides}
    # per-round ratios: the two runs of a round are back to back, so a load change on the shared machine
    # hits both; their spread says how far the median ratio can be trusted
    ratios = {}
    for other in [s for s in sides if s != "kdbench"]:
        per_round = [k["steps_per_s"] / o["steps_per_s"] for k, o in
                     zip([x for x in runs if x["side"] == "kdbench"], [x for x in runs if x["side"] == other])]
        ratios[other] = {"median_ratio": med["kdbench"] / med[other], "per_round": per_round,
                         "geomean_ratio_ci95": ratio_ci(per_round)}
    # where a step's time goes (median over runs): generating the rollouts, and the rest (teacher and student
    # forwards, loss, backward, optimizer). The rest is the same model work on both sides, so TRL's step time over
    # kdbench's rest is the ratio kdbench would reach if its generation cost nothing.
    split = {}
    for s in sides:
        gens = [x["generation_s_per_step"] for x in runs if x["side"] == s and "generation_s_per_step" in x]
        if gens:
            step_ms = 1000 / med[s]
            gen_ms = 1000 * statistics.median(gens)
            split[s] = {"step_ms": step_ms, "generation_ms": gen_ms, "rest_ms": step_ms - gen_ms}
    if "kdbench" in split and "trl-distill" in split:
        split["ceiling_ratio_if_generation_were_free"] = split["trl-distill"]["step_ms"] / split["kdbench"]["rest_ms"]
        # per round (the two runs of a round are back to back), as the steps/s ratios: its spread is the CI
        per_round = [(1 / o["steps_per_s"]) / (1 / k["steps_per_s"] - k["generation_s_per_step"])
                     for k, o in zip([x for x in runs if x["side"] == "kdbench"],
                                     [x for x in runs if x["side"] == "trl-distill"])]
        split["ceiling_per_round"] = per_round
        split["ceiling_geomean_ci95"] = ratio_ci(per_round)
    bar = ratios.get("trl-distill", {}).get("median_ratio")
    payload = {"setting": SETTING, "steps": args.steps, "rounds": args.rounds, "machine": machine,
               "trl_env": dict(zip(["trl", "transformers", "torch"], trl_ver)), "runs": runs,
               "median_steps_per_s": med, "ratios_kdbench_over": ratios, "step_split": split,
               "goal": "kdbench >= 2x TRL DistillationTrainer", "meets_goal": bar is not None and bar >= 2.0}
    rows = [{"side": s, "median_steps_per_s": med[s],
             "runs_steps_per_s": ", ".join(f"{x['steps_per_s']:.3f}" for x in runs if x["side"] == s)}
            for s in sides]
    for other, r in ratios.items():
        goal = f" (goal >= 2: {'met' if r['median_ratio'] >= 2 else 'NOT met'})" if other == "trl-distill" else ""
        g, lo, hi = r["geomean_ratio_ci95"]
        rows.append({"side": f"ratio kdbench / {other}", "median_steps_per_s": r["median_ratio"],
                     "runs_steps_per_s": "per round " + ", ".join(f"{x:.2f}" for x in r["per_round"])
                     + f"; geometric mean {g:.2f} [95% CI {lo:.2f}, {hi:.2f}]" + goal})
    for s in sides:
        if s in split:
            sp = split[s]
            rows.append({"side": f"{s}: ms per step", "median_steps_per_s": round(sp["step_ms"], 1),
                         "runs_steps_per_s": f"generation {sp['generation_ms']:.1f} ms, the rest (forwards, loss, "
                                             f"backward, optimizer) {sp['rest_ms']:.1f} ms"})
    if "ceiling_ratio_if_generation_were_free" in split:
        g, lo, hi = split["ceiling_geomean_ci95"]
        rows.append({"side": "ceiling: TRL-distill step / kdbench rest", "median_steps_per_s":
                     round(split["ceiling_ratio_if_generation_were_free"], 2),
                     "runs_steps_per_s": "the ratio kdbench would reach with generation at zero cost; per round "
                                         + ", ".join(f"{x:.2f}" for x in split["ceiling_per_round"])
                                         + f"; geometric mean {g:.2f} [95% CI {lo:.2f}, {hi:.2f}]"})
    write_results("bench_vs_trl", payload, rows, ["side", "median_steps_per_s", "runs_steps_per_s"],
                  notes=f"On-policy distillation (lmbda 1, beta 0.5 JSD), batch {SETTING['batch_size']}, "
                        f"{SETTING['max_new_tokens']} new tokens at temperature {SETTING['temperature']}, "
                        f"{args.steps} steps per run (steps 2..N timed), {args.rounds} alternating rounds, 1 torch "
                        f"thread, CPU. Sides: kdbench gkd, TRL DistillationTrainer (trl-distill), TRL GKDTrainer "
                        f"(trl). TRL env: {' / '.join(trl_ver) or '?'} (trl / transformers / torch).",
                  out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
