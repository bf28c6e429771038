"""AKL (Wu et al., COLING 2025, arXiv 2404.02657): adaptive Kullback-Leibler divergence.

Data source: the fixed gold responses, from the SFT student. The official code
(wutaiqiang/LLM_KD_AKL, AKL.py) is only the loss, a drop-in for the distillation loss of a
MiniLLM-style finetune.py (its README points at MiniLLM's finetune.py:166); the rest of the setting
is the DistiLLM-codebase one in which ABKD's authors run it (ghwang-s/abkd
scripts/gpt2/akl/train_0.1B_1.5B.sh:18 the `init` SFT student, :62 --kd-ratio 1.0; its `--type AKL` itself runs
alphanet, finetune.py:176-203, so we take only the setting), the same as
our `fkl`, `rkl` and `abkd`, so those four differ only in the divergence.

Divergence: `kdbench.divergences.akl`, per response token (AKL.py get_ratio / get_kl):
AKL = (g_H * FKL + g_T * RKL) / (g_H + g_T). The head H is the teacher's top-1 plus every token
whose cumulative sorted teacher mass is <= mu; the tail is the rest. g_H and g_T sum |p - sg(q)|
over each part: FKL weighs more where the student misses the teacher's head, RKL where it
misses the tail.

Update rule: gradient descent on (1 - kd_ratio) * CE + kd_ratio * AKL, token mean; kd_ratio 1 (no
CE), as in that script and in TAID's re-implementation (distil_ratio 1).

Deviations from AKL.py: where q = p exactly the weights are 0/0 (NaN upstream); we use 1/2 (both
KLs and their gradients are 0 there, so the value is exact). Upstream sets +-inf logits to 0 before
the softmax that builds the weights; we use the model's probabilities (a -inf logit is
probability 0). AKL.py is a snippet (no imports, an undefined `no_model_batch`); TAID's
re-implementation (adaptive_kl.py:31-38) differs (sorted mask applied to unsorted gaps, crossing
token in the head, q not detached), and we follow AKL.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import METHODS, MethodConfig, akl, check_range
from methods.fkl import FKL  # gold data, SFT init, (1 - kd_ratio) CE + kd_ratio D: only D differs


@dataclass
class AKLConfig(MethodConfig):
    mu: float = 0.5  # head threshold: AKL.py:1 get_ratio(mu=0.5); TAID arguments.py adaptive_kl_threshold 0.5
    kd_ratio: float = 1.0  # abkd scripts/gpt2/akl/train_0.1B_1.5B.sh:62 --kd-ratio 1.0

    def __post_init__(self) -> None:
        check_range("mu", self.mu, 0.0, 1.0, "akl")
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "akl")


@METHODS.register("akl")
class AKL(FKL):
    description = "AKL: FKL/RKL mixed per token by the teacher's head/tail errors (mu 0.5), on gold, from SFT"
    Config = AKLConfig
    student_init = "sft"  # the script's `init` (SFT) student
    divergence = staticmethod(akl)
    term = "akl"

    def divergence_kwargs(self) -> dict:
        return {"mu": self.config.mu}
