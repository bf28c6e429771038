"""RKL: token-level reverse KL to the teacher on gold responses, from the SFT student, no CE term.

The RKL baseline of the ABKD and DistiLLM papers: their codebase's `--type rkl` (finetune.py:194
`reverse_kl`), in the setting of its `--type kd` runs: --kd-ratio 1.0 from the `init` SFT student
(ghwang-s/abkd scripts/gpt2/kd/kd_base.sh:18, 62). It is our `fkl` with the divergence reversed,
and differs from `abkd` and `akl` only in the divergence: the baseline of their "beats RKL" claims.
Unlike `single_step` (MiniLLM's token-level RKL) it trains on gold responses, not student samples.

Data source: gold responses. Divergence: `kdbench.divergences.reverse_kl`. Update rule: gradient
descent on (1 - kd_ratio) * CE + kd_ratio * RKL, token mean.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import METHODS, reverse_kl
from methods.fkl import FKL, FKLConfig


@dataclass
class RKLConfig(FKLConfig):
    method = "rkl"  # kd_ratio 1.0 as for fkl (kd_base.sh:62)


@METHODS.register("rkl")
class RKL(FKL):
    description = "reverse KL to the teacher on gold responses, from SFT, no CE (ABKD/DistiLLM's RKL baseline)"
    Config = RKLConfig
    divergence = staticmethod(reverse_kl)
    term = "rkl"
