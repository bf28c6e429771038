"""ABKD (Wang et al., ICML 2025, arXiv 2505.04560): distillation with the alpha-beta divergence.

Data source: the fixed gold responses. The official LLM scripts run `--type ab`, which never enters
the student-generation branches of finetune.py (those need "mixed" or "adaptive" in the type,
finetune.py:317-340). The student starts from the SFT student, as the scripts' `init` checkpoint
(scripts/gpt2/ab/train_0.3B_1.5B.sh:22).

Divergence: `kdbench.divergences.alpha_beta`, over the full vocabulary, per response token:
D = -1/(ab) sum_v [p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)]. (1, 0) is forward KL and (0, 1)
reverse KL; a smaller alpha weights the tokens with large errors ("hardness"), a larger beta the
tokens where the student is confident ("confidence").

Update rule: gradient descent on the token mean of (1 - kd_ratio) * CE + kd_ratio * D; the scripts'
kd_ratio is 1, so no CE term (the paper's Eq. 7 writes CE + lambda * D).

Defaults: alpha 0.2, beta 0.7 from the GPT-2 0.3B and 0.7B scripts (train_0.3B_1.5B.sh:9-12 and
103-105: alpha + beta 0.9, alpha 0.2; same in train_0.7B_1.5B.sh). The argument defaults are 0.5/0.5
(arguments.py:200-201); the 0.1B script's header also says 0.2/0.7 but its loop runs alpha 0, beta 1,
i.e. RKL (train_0.1B_1.5B.sh:9-12 vs 104-105), so we do not follow it. The scripts clip gradients at
1.0 (`--clip-grad 1.0`): that is the preset's training setting (clip_grad; 1.0 in the gpt2 presets).

Deviations from the official losses.py (ab_div, lines 6-97):
- where alpha, beta or alpha + beta is 0 we use the continuous limits, whose scale is 1/alpha^2
  (1/beta^2); the official special cases use 1/alpha (1/beta), right only at alpha = 1 (beta = 1),
  and dispatch on exact float equality, so values near those lines jump;
- computed in log space on the shared support (entries where either model has probability 0 are
  left out, as for every divergence in kdbench.divergences).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import METHODS, MethodConfig, alpha_beta, check_range
from methods.fkl import FKL  # gold data, SFT init, (1 - kd_ratio) CE + kd_ratio D: only D differs


@dataclass
class ABKDConfig(MethodConfig):
    alpha: float = 0.2  # scripts/gpt2/ab/train_0.3B_1.5B.sh:11 (START_ALPHA); alpha + beta = 0.9 (line 9)
    beta: float = 0.7  # 0.9 - 0.2 (train_0.3B_1.5B.sh:105)
    kd_ratio: float = 1.0  # (1 - r) * CE + r * D; train_0.3B_1.5B.sh:65 --kd-ratio 1.0

    def __post_init__(self) -> None:
        # Our bound, not the paper's: a negative alpha (beta) weights near-zero probabilities by
        # p^alpha, unbounded, which overflows fp32 over a real vocabulary. The scripts' grids are in [0, 1].
        check_range("alpha", self.alpha, 0.0, 1.0, "abkd")
        check_range("beta", self.beta, 0.0, 1.0, "abkd")
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "abkd")


@METHODS.register("abkd")
class ABKD(FKL):
    description = "ABKD: alpha-beta divergence (alpha 0.2, beta 0.7) to the teacher on gold responses, from SFT"
    Config = ABKDConfig
    student_init = "sft"  # the scripts distil the `init` (SFT) student
    divergence = staticmethod(alpha_beta)
    term = "ab_div"

    def divergence_kwargs(self) -> dict:
        return {"alpha": self.config.alpha, "beta": self.config.beta}
