"""Typed configuration: dataclasses with paper defaults, validated on construction.

Config flows one way: preset -> YAML file -> CLI flags / `--set key=value` -> these dataclasses ->
the code. The resolved config is frozen (JSON) into every run and cell folder, and stage caches
are keyed by a hash of the part of it that determines them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .dotted import deep_update, set_dotted  # noqa: F401 (re-exported)
from .registry import suggest
from .selection import SelectConfig


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


TEACHER_CACHES = ("none", "full", "topk")
# `full` stores V float32 log-probs and int32 ids a position: above this vocabulary, topk (49,152: 393 kB)
FULL_CACHE_MAX_VOCAB = 8192


@dataclass
class TrainConfig:
    """One training stage's optimisation budget (defaults: MiniLLM's SFT/KD scripts)."""

    steps: int = 500
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per step; the loss equals the full batch's exactly
    lr: float = 5e-4
    min_lr: float = 1e-7  # cosine floor (MiniLLM lr_min)
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant | linear
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    clip_grad: float = 1.0  # 0 disables
    checkpoint_every: int = 0  # 0: only the final model is saved
    log_every: int = 10
    seed: int = 1234
    # Logit-level losses from hidden states in chunks of tokens (kdbench/chunked.py): never the whole
    # [N, V] logits. Same values and gradients up to float summation order, which is why it is in
    # every key. auto: on from a vocabulary of 8192 (real tokenizers), off for the toy world, whose
    # tiny logits gain nothing and whose teacher was tuned on the unchunked rounding.
    chunked_loss: str = "auto"  # auto | on | off
    # rows per chunk = min(loss_chunk_tokens, loss_chunk_elements // V, >= 1) (chunked.rows_per_chunk): ~8 fp32
    # [rows, V] temporaries live at once, so an element budget keeps loss memory flat in V (256 rows: 1 GB at
    # 128k). Default: 256 rows at V = 32,768 (32 MiB a temporary), the old 256-row chunks for any V <= 32,768.
    # Liger's fused linear losses shrink rows as V grows too (~ B*T / ceil(V / H)); torchtune cuts T in 8.
    loss_chunk_tokens: int = 256
    loss_chunk_elements: int = 256 * 32768
    # The teacher on fixed responses from a stage shared by every method, epoch and seed, never on
    # rollouts (docs/teacher_cache.md). none: the live teacher every step. full: every token's log-prob
    # in float32, exact (small vocabularies: V x 8 bytes a position; the tiny preset). topk: the k most
    # likely, the rest spread evenly; k = 256: kd loss 0.44 %, gradient 0.12 % off the exact teacher on
    # SmolLM2 (benchmarks/bench_topk_error.py), read only by the methods that stay accurate with it
    teacher_cache: str = "none"  # none | full | topk
    teacher_cache_k: int = 256  # topk only

    def __post_init__(self) -> None:
        _check(self.teacher_cache in TEACHER_CACHES, "teacher_cache",
               f"'{self.teacher_cache}' is not one of {', '.join(TEACHER_CACHES)}")
        _check(self.teacher_cache_k >= 1, "teacher_cache_k", f"must be >= 1, got {self.teacher_cache_k}")
        _check(self.chunked_loss in ("auto", "on", "off"), "chunked_loss",
               f"'{self.chunked_loss}' is not one of auto, on, off")
        _check(self.loss_chunk_tokens >= 1, "loss_chunk_tokens", f"must be >= 1, got {self.loss_chunk_tokens}")
        _check(self.loss_chunk_elements >= 1, "loss_chunk_elements",
               f"must be >= 1 (elements of one [rows, vocabulary] chunk), got {self.loss_chunk_elements}")
        _check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.batch_size % self.grad_accum == 0, "grad_accum",
               f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.min_lr >= 0, "min_lr", f"must be >= 0, got {self.min_lr}")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in ("cosine", "constant", "linear"), "schedule",
               f"'{self.schedule}' is not one of cosine, constant, linear")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", "must be in [0, 1)")
        _check(self.clip_grad >= 0, "clip_grad", f"must be >= 0, got {self.clip_grad}")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        _check(self.log_every >= 1, "log_every", "must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation protocol (defaults: MiniLLM's evaluate_main)."""

    seeds: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filtering
    max_new_tokens: int = 256
    max_prompt_tokens: int = 256
    batch_size: int = 32
    # None: the task's own default (Task.no_repeat_ngram_size: 6 on MiniLLM's five evaluation sets, as
    # LMOps' evaluate.py argparse default --no-repeat-ngram-size 6 (reference/minillm.md §3.1); 0 on the
    # toy world). The resolved value is in every eval cell's config and key. Effect: docs/protocol.md.
    no_repeat_ngram_size: int | None = None
    max_examples: int | None = None  # cap on test examples per task (presets use small caps)
    coverage_samples: int = 8  # samples per multi-answer prompt for mode coverage (toy world)
    metrics: list[str] | None = None  # None: each task's default metrics
    exposure_prompts: int = 32  # ExAccErr: first N test prompts (MiniLLM: the Dolly test set)
    exposure_samples: int = 4  # ExAccErr: samples per prompt from model and teacher (paper: 10)

    def __post_init__(self) -> None:
        _check(len(self.seeds) >= 1, "eval.seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "eval.seeds", f"duplicate seeds in {self.seeds}")
        _check(self.temperature > 0, "eval.temperature", f"must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "eval.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "eval.top_k", f"must be >= 0, got {self.top_k}")
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        _check(self.max_prompt_tokens >= 1, "eval.max_prompt_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.no_repeat_ngram_size is None or self.no_repeat_ngram_size >= 0, "eval.no_repeat_ngram_size",
               f"must be >= 0 or null (the task's default), got {self.no_repeat_ngram_size}")
        _check(self.coverage_samples >= 1, "eval.coverage_samples", "must be >= 1")
        _check(self.exposure_prompts >= 1, "eval.exposure_prompts", "must be >= 1")
        _check(self.exposure_samples >= 1, "eval.exposure_samples", "must be >= 1")
        _check(self.max_examples is None or self.max_examples >= 1, "eval.max_examples", "must be >= 1 or null")


@dataclass
class ModelBuildConfig:
    """How built-in presets are made: base pretraining on the task's text stream, then SFT."""

    teacher_pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=1e-3, warmup_steps=50))
    student_pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=2e-3, warmup_steps=30))
    tokenizer: str = "word"  # word | bpe (tokenizer trained offline on the task's text)
    bpe_vocab_size: int = 1024
    # Preset students' tokenizer: "same" (the teacher's) or "bpe" (byte-level BPE of
    # student_bpe_vocab_size on the tasks' text; only methods that distil across tokenizers may then
    # use a teacher, see Method.cross_tokenizer)
    student_tokenizer: str = "same"
    student_bpe_vocab_size: int = 320

    def __post_init__(self) -> None:
        _check(self.student_tokenizer in ("same", "bpe"), "build.student_tokenizer",
               f"'{self.student_tokenizer}' is not one of same, bpe")
        _check(self.student_bpe_vocab_size > 256, "build.student_bpe_vocab_size",
               f"must exceed the 256 byte symbols, got {self.student_bpe_vocab_size}")


@dataclass
class PeftConfig:
    """Parameter-efficient students through the `peft` library (kdbench.adapters). method none trains
    every weight. LoRA defaults are MiniLLM's: arguments.py `--peft-lora-r 8 --peft-lora-alpha 32
    --peft-lora-dropout 0.1`, as its scripts/llama/sft/sft_7B_lora.sh uses them (reference/minillm.md,
    hyperparameter table). target_modules auto = peft's per-architecture defaults (q/v projections for
    Llama, c_attn for GPT-2)."""

    method: str = "none"  # none | lora
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["auto"])  # module-name suffixes, or auto
    save_merged: bool = False  # also save adapter-merged full weights (evaluation then loads those)

    def __post_init__(self) -> None:
        _check(self.method in ("none", "lora"), "peft.method", f"'{self.method}' is not one of none, lora")
        _check(self.r >= 1, "peft.r", f"must be >= 1, got {self.r}")
        _check(self.alpha > 0, "peft.alpha", f"must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, "peft.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(len(self.target_modules) >= 1 and ("auto" not in self.target_modules or self.target_modules == ["auto"]),
               "peft.target_modules", f"a list of module names, or [auto] alone; got {self.target_modules}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def spec(self) -> dict[str, Any] | None:
        """What changes a trained student (cache keys); None when off, so keys of full fine-tuning stay."""
        return dataclasses.asdict(self) if self.enabled else None


@dataclass
class BenchConfig:
    """Everything that determines a benchmark's numbers."""

    preset: str = "tiny"
    teacher: str = "gpt2-toy-m"  # model preset name, hub name, or local path
    students: list[str] = field(default_factory=lambda: ["gpt2-toy-s"])
    methods: list[str] = field(default_factory=lambda: ["sft", "kd"])
    tasks: list[str] = field(default_factory=lambda: ["toy"])
    train_task: str = "toy"  # whose train split trains teacher and students
    # Teacher-guided methods also learn from the train task's prompts without gold responses (its
    # "unlabeled" split, where it has one): teacher samples as targets, or on-policy rollouts scored by
    # the teacher. SFT never sees them. KD's premise is that the teacher knows what the gold data lacks.
    use_unlabeled: bool = True
    max_length: int = 512  # prompt + response tokens in training (MiniLLM: 512)
    max_prompt_length: int = 256
    teacher_sft: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=5e-5))
    distill: TrainConfig = field(default_factory=TrainConfig)  # default budget for every method
    # Training seeds: one train cell per (student, method, seed), each seed replacing the train config's
    # `seed`; empty = one run at the config's own seed (a smoke test, not a result: no between-seed CI).
    train_seeds: list[int] = field(default_factory=list)
    # TrainConfig overrides per budget class a method declares (Method.budget, e.g. "on_policy"), then
    # per method (method_train wins): distill <- budget_train[budget] <- method_train[method].
    budget_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method TrainConfig overrides
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method config overrides
    build: ModelBuildConfig = field(default_factory=ModelBuildConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    select: SelectConfig = field(default_factory=SelectConfig)  # checkpoint selection on dev (kdbench.selection)
    # The tuning protocol (kdbench.tuning): TrainConfig field -> values, the same grid for every method;
    # selected on the dev split by tune_metric ("" = the train task's primary metric).
    tune: dict[str, list[Any]] = field(default_factory=dict)
    tune_metric: str = ""
    baseline: str = "sft"  # the method comparisons and the delta table are against (when it ran)
    data_dir: str | None = None
    # Pretraining corpus for MiniLLM's L_PT (plain .txt: one document per blank-line-separated
    # paragraph; .jsonl: one document per line, field "text"), tokenised into max_length blocks like
    # the toy world's stream and cached as a stage. Empty: the train task's own stream (the toy
    # world has one; real tasks have none, and minillm then runs and is labelled "no L_PT").
    pt_corpus: list[str] = field(default_factory=list)
    max_train_examples: int | None = None
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-task extra settings
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | bfloat16 | float16 (training mixed precision on GPU)
    teacher_device: str = "same"  # same | cpu | cuda:N
    threads: int = 0  # torch threads on CPU; 0 = leave torch's default
    judge: dict[str, Any] = field(default_factory=dict)  # LLM-judge settings (kdbench.metrics.judge.JudgeConfig)
    # plain: task prompts as rendered; chat: instruction (+ input) as the user turn of the teacher's chat
    # template; chat-alpaca: the rendered Alpaca prompt as that user turn (runner._prompt_wrapper)
    prompt_format: str = "plain"
    peft: PeftConfig = field(default_factory=PeftConfig)  # LoRA students (kdbench.adapters)
    # Experiment trackers through accelerate's tracker API (kdbench.tracking); changes no number, so
    # it is in no cache key.
    report_to: str = "none"  # none | tensorboard | wandb | trackio

    def __post_init__(self) -> None:
        _check(len(self.students) >= 1, "students", "needs at least one student")
        _check(len(self.methods) >= 1, "methods", "needs at least one method")
        _check(len(self.tasks) >= 1, "tasks", "needs at least one task")
        _check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        _check(1 <= self.max_prompt_length < self.max_length, "max_prompt_length",
               f"must be in [1, max_length={self.max_length}), got {self.max_prompt_length}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "dtype",
               f"'{self.dtype}' is not one of float32, bfloat16, float16")
        _check(self.threads >= 0, "threads", "must be >= 0")
        _check(len(set(self.train_seeds)) == len(self.train_seeds), "train_seeds",
               f"seeds must be distinct, got {self.train_seeds}")
        _check(self.prompt_format in ("plain", "chat", "chat-alpaca"), "prompt_format",
               f"'{self.prompt_format}' is not one of plain, chat, chat-alpaca")
        _check(self.report_to in ("none", "tensorboard", "wandb", "trackio"), "report_to",
               f"'{self.report_to}' is not one of none, tensorboard, wandb, trackio")
        # degenerate values nobody means: refused here rather than run into a table that looks real
        for key, items in (("students", self.students), ("methods", self.methods), ("tasks", self.tasks)):
            dup = sorted({x for x in items if items.count(x) > 1})
            _check(not dup, key, f"names {', '.join(dup)} more than once; list each once")
        _check(self.teacher not in self.students, "students",
               f"'{self.teacher}' is also the teacher: distilling a model into itself compares nothing; "
               "choose a smaller student")
        _check(self.distill.steps >= 1, "distill.steps",
               "0 trains nothing: every distilled row would be the student base under another name; give >= 1")
        _check(self.max_train_examples is None or self.max_train_examples >= 1, "max_train_examples",
               f"must be >= 1 or null, got {self.max_train_examples}")

    def train_config_for(self, method: str, train_seed: int | None = None, budget: str | None = None,
                         point: dict[str, Any] | None = None) -> TrainConfig:
        """The TrainConfig of one method (and training seed): distill, then the method's budget class's
        overrides, then the method's own; a training seed replaces `seed`."""
        base = dataclasses.asdict(self.distill)
        where = f"method_train.{method}"
        if budget is not None and budget in self.budget_train:
            base.update(self.budget_train[budget])
            if method not in self.method_train:
                where = f"budget_train.{budget}"
        base.update(self.method_train.get(method, {}))
        if train_seed is not None:
            base["seed"] = int(train_seed)
        base.update(point or {})  # a tuning grid point (kdbench.tuning)
        return from_dict(TrainConfig, base, where=where)

    def train_seed_list(self) -> list[int | None]:
        """The training seeds to run; [None] = the single run at the train config's own seed."""
        return list(self.train_seeds) or [None]


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass with validation of keys and types


def from_dict(cls, data: dict[str, Any] | None, where: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys (with did-you-mean) and bad types."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'. Valid keys: {', '.join(names)}." + suggest(key, names))
        kwargs[key] = _coerce(hints[key], value, full)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if where and "config key '" in str(e) and f"'{where}." not in str(e):
            raise ConfigError(str(e).replace("config key '", f"config key '{where}.", 1)) from None
        raise


def _coerce(tp, value, key):
    origin = get_origin(tp)
    args = get_args(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is type(None) or tp is type(None):
        return value
    # Optional[X] / X | None
    if args and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(args[0], v, key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    return value


# TrainConfig settings added after cache keys existed: in a key only when set off their default, so
# cached stages and cells of earlier runs stay valid (chunked_loss "auto" is off for the toy world).
_NEW_TRAIN_DEFAULTS = {"chunked_loss": "auto", "loss_chunk_tokens": 256, "loss_chunk_elements": 256 * 32768}


def train_key(train: "TrainConfig", teacher: bool = True) -> dict[str, Any]:
    """A TrainConfig as it enters cache keys (to_dict minus new settings left at their default); the
    teacher cache's settings only when it is on and the stage reads a teacher (not SFT, pretraining)."""
    d = to_dict(train)
    for k, v in _NEW_TRAIN_DEFAULTS.items():
        if d.get(k) == v:
            d.pop(k)
    if not teacher or d.get("teacher_cache") == "none":
        d = {k: v for k, v in d.items() if k not in ("teacher_cache", "teacher_cache_k")}
    elif d.get("teacher_cache") == "full":
        d.pop("teacher_cache_k", None)  # no k: every token is kept
    return d


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def stable_hash(obj: Any, n: int = 12) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
