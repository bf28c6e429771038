"""Students initialised by pruning the teacher: `--student prune:k=2[:mlp=768][:select=norm]`.

The student is the teacher's own architecture with fewer layers and/or a narrower MLP, and its
weights are copied from the teacher, so it starts pretrained and shares the tokenizer exactly
(no vocabulary check can fail). Works for any decoder family whose layers sit in a numbered list
(`...layers.<i>.` as Llama, Qwen2, Mistral, OPT; `...h.<i>.` as GPT-2); verified on Llama, Qwen2,
GPT-2 in tests.

Spec keys (colon-separated, so a comma still separates several students):
  k=<int>        keep every k-th layer: 0, k, 2k, ... (k=1 keeps all; default 1). The first layer
                 is always kept (it reads the embeddings directly); the last is kept only if k
                 divides n_layers - 1: DistilBERT-style "one of every k".
  drop=<a>-<b>   instead of k: drop the contiguous block of layers a..b (inclusive, 0-based) and
                 keep the rest. Middle-to-late blocks hurt least: on SmolLM2-135M-Instruct (30
                 layers) the response-token loss on 16 Dolly dev examples right after pruning to 15
                 layers is 7.2 for drop=5-19, 8.1 for drop=7-21, 10.7 for drop=11-25 and 13.7 for
                 k=2 (teacher 2.9; `smol` uses drop=5-19).
  mlp=<int|frac> new MLP width: an integer number of units, or a fraction in (0, 1) of the
                 teacher's (rounded up to a multiple of 8). Default: unchanged.
  select=norm|first  which MLP units survive (default norm): the highest-norm units per layer
                 (norm over all of a unit's weights in every MLP matrix: gate/up rows and down
                 columns for Llama, c_fc columns and c_proj rows for GPT-2), or the first n.
                 The same units are kept in every matrix of the layer, so each unit stays whole.

Which teacher: the one students distil from (after teacher SFT when the preset has it). The
pruned student's parameter count is logged, stored in its stage's DONE file, and shown in the
leaderboard's parameter column.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError

PREFIX = "prune"
_LAYER_RE = re.compile(r"(^|\.)(layers|h)\.(\d+)\.")


@dataclass(frozen=True)
class PruneSpec:
    k: int = 1
    mlp: float | int | None = None
    select: str = "norm"
    drop: tuple[int, int] | None = None  # inclusive block of layers to drop (instead of k)

    def as_dict(self) -> dict:
        d = {"k": self.k, "mlp": self.mlp, "select": self.select}
        if self.drop is not None:  # only then: cache keys of k-pruned students stay as they were
            d["drop"] = list(self.drop)
        return d

    def kept_layers(self, n_layers: int) -> list[int]:
        if self.drop is None:
            return list(range(0, n_layers, self.k))
        a, b = self.drop
        if b >= n_layers:
            raise ConfigError(f"prune: drop={a}-{b} reaches past the teacher's last layer ({n_layers - 1})")
        kept = [i for i in range(n_layers) if not a <= i <= b]
        if not kept:
            raise ConfigError(f"prune: drop={a}-{b} drops every one of the teacher's {n_layers} layers")
        return kept


def is_prune_spec(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ":")


def parse_prune_spec(name: str, where: str = "--student") -> PruneSpec:
    """'prune:k=2:mlp=0.5' -> PruneSpec; errors name the bad part and the valid keys."""
    valid = "k=<int >= 1>, drop=<a>-<b> (layers a..b), mlp=<int units | fraction in (0,1)>, select=norm|first"
    kw: dict = {}
    for part in name.split(":")[1:]:
        if "=" not in part:
            raise ConfigError(f"{where} '{name}': '{part}' is not key=value; valid keys: {valid}")
        key, val = (s.strip() for s in part.split("=", 1))
        try:
            if key == "k":
                kw["k"] = int(val)
                if kw["k"] < 1:
                    raise ValueError
            elif key == "mlp":
                f = float(val)
                kw["mlp"] = int(f) if f >= 1 and f.is_integer() else f
                if not (kw["mlp"] >= 1 if isinstance(kw["mlp"], int) else 0 < f < 1):
                    raise ValueError
            elif key == "drop":
                a, b = (int(x) for x in val.split("-"))
                if not 0 <= a <= b:
                    raise ValueError
                kw["drop"] = (a, b)
            elif key == "select":
                if val not in ("norm", "first"):
                    raise ValueError
                kw["select"] = val
            else:
                raise ConfigError(f"{where} '{name}': unknown key '{key}'; valid keys: {valid}")
        except ValueError:
            raise ConfigError(f"{where} '{name}': bad value '{val}' for '{key}'; valid: {valid}") from None
    spec = PruneSpec(**kw)
    if spec.drop is not None and spec.k != 1:
        raise ConfigError(f"{where} '{name}': give k or drop, not both")
    if spec.k == 1 and spec.mlp is None and spec.drop is None:
        raise ConfigError(f"{where} '{name}': prunes nothing; give k=<int >= 2>, drop=<a>-<b> and/or mlp=<width>, "
                          "e.g. prune:k=2")
    return spec


def _mlp_width(cfg) -> tuple[str, int]:
    """(config attribute, value) of the MLP width for the families we know."""
    for attr in ("intermediate_size", "ffn_dim"):
        if getattr(cfg, attr, None):
            return attr, int(getattr(cfg, attr))
    if hasattr(cfg, "n_inner"):  # GPT-2: None means 4 x n_embd
        return "n_inner", int(cfg.n_inner or 4 * cfg.n_embd)
    raise ConfigError(f"prune: cannot find the MLP width of a {type(cfg).__name__} "
                      "(expected intermediate_size, ffn_dim or n_inner)")


def prune_model(teacher, spec: PruneSpec):
    """A new model of the teacher's class with the kept layers / MLP units copied from the teacher."""
    import copy

    import torch

    cfg = copy.deepcopy(teacher.config)
    n_layers = int(cfg.num_hidden_layers)
    kept = spec.kept_layers(n_layers)
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):  # per-layer attention kinds (Qwen2, ...)
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    attr, width = _mlp_width(cfg)
    new_width = width
    if spec.mlp is not None:
        new_width = spec.mlp if isinstance(spec.mlp, int) else 8 * math.ceil(spec.mlp * width / 8)
        if new_width > width:
            raise ConfigError(f"prune: mlp={spec.mlp} is wider than the teacher's MLP ({width} units)")
        setattr(cfg, attr, new_width)
    student = type(teacher)(cfg)
    t_sd = teacher.state_dict()
    new_sd = {}
    unit_idx: dict[int, torch.Tensor] = {}  # student layer -> kept MLP units (same for every matrix)
    for key, s_param in student.state_dict().items():
        m = _LAYER_RE.search(key)
        j = int(m.group(3)) if m else None
        t_key = key if m is None else key[: m.start(3)] + str(kept[j]) + key[m.end(3):]
        if t_key not in t_sd:
            raise ConfigError(f"prune: student weight '{key}' has no teacher counterpart '{t_key}'")
        w = t_sd[t_key]
        if w.shape != s_param.shape:
            if j is None or new_width == width:
                raise ConfigError(f"prune: unexpected shape change for '{key}': {tuple(w.shape)} -> {tuple(s_param.shape)}")
            if j not in unit_idx:
                unit_idx[j] = _select_units(t_sd, key[: m.end()], kept[j], m, width, new_width, spec.select)
            dim = [d for d in range(w.dim()) if w.shape[d] != s_param.shape[d]]
            if len(dim) != 1 or w.shape[dim[0]] != width:
                raise ConfigError(f"prune: cannot map '{key}' {tuple(w.shape)} -> {tuple(s_param.shape)}")
            w = w.index_select(dim[0], unit_idx[j])
        new_sd[key] = w.clone()
    student.load_state_dict(new_sd, strict=True)
    if hasattr(student, "generation_config") and hasattr(teacher, "generation_config"):
        student.generation_config = copy.deepcopy(teacher.generation_config)
    from .lean.activations import fuse_activations

    return fuse_activations(student), kept  # as load_model does: the same outputs, a faster forward


def _select_units(t_sd, s_prefix: str, t_layer: int, m, width: int, new_width: int, select: str):
    """Indices (sorted) of the MLP units kept in one layer: the first n, or the n of highest norm,
    the norm summed over every teacher tensor of the layer that has a dimension of size `width`."""
    import torch

    if select == "first":
        return torch.arange(new_width)
    t_prefix = s_prefix[: m.start(3)] + str(t_layer) + "."
    score = torch.zeros(width, dtype=torch.float64)
    for key, w in t_sd.items():
        if not key.startswith(t_prefix) or not ("mlp" in key or "fc" in key):
            continue
        for d in range(w.dim()):
            if w.shape[d] == width:
                dims = [x for x in range(w.dim()) if x != d]
                score += (w.double() ** 2).sum(dim=dims) if dims else w.double() ** 2
                break
    return torch.topk(score, new_width).indices.sort().values
