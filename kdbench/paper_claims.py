"""The MiniLLM paper's claims (Gu, Dong, Wei, Huang, arXiv 2306.08543), and the headline claims of
later KD methods (at the end), as plain data.

kdbench.claims registers every entry of PAPER_CLAIMS with `register_claim(**entry)`; this module
imports nothing from kdbench, so the claims registry has one owner and no import cycle. Each
requirement dict names method, other, metric (lists expand to their product), expect, tasks,
margin, vs_metric, other_student, required and note; see kdbench/claims.py for their meaning.
Deltas are method - other in the metric's own units (Rouge-L, validity, Dist-4 x100; ECE 0-1).
"""
from __future__ import annotations

SOURCE = "MiniLLM (Gu et al., arXiv 2306.08543)"
PRIMARY = {"toy": "validity", "*": "rouge_l"}  # a task's primary metric: exact validity in the toy world
BASELINES = ["sft", "kd", "seqkd"]
ABLATIONS = ["minillm-no-single-step", "minillm-no-teacher-mix", "minillm-no-length-norm"]

PAPER_CLAIMS = [
    dict(id="C1", text="MiniLLM beats SFT w/o KD, KD and SeqKD on Rouge-L and on the judge score, per task",
         source=SOURCE + ", Table 1",
         requires=[dict(method="minillm", other=BASELINES, metric=["rouge_l", "judge"])]),
    dict(id="C2", text="Reverse KL is mode-seeking: MiniLLM and single-step students have higher validity "
                       "and lower mode coverage than KD",
         source=SOURCE + ", Section 2.1 / Figure 2",
         requires=[dict(method=["minillm", "single_step"], other="kd", metric="validity", tasks=["toy"]),
                   dict(method=["minillm", "single_step"], other="kd", metric="mode_coverage", expect="lower",
                        tasks=["toy"])]),
    dict(id="C3", text="MiniLLM is better calibrated than KD and SeqKD: lower ECE, higher classification accuracy",
         source=SOURCE + ", Table 5",
         requires=[dict(method="minillm", other=["kd", "seqkd"], metric="ece", expect="lower",
                        tasks=["sst2", "boolq", "toy"]),
                   dict(method="minillm", other=["kd", "seqkd"], metric="cls_acc", tasks=["sst2", "boolq", "toy"])],
         notes="Paper, SST-2: ECE 0.099 (MiniLLM) vs 0.191 (KD) / 0.243 (SeqKD)."),
    dict(id="C4", text="MiniLLM has lower exposure bias than KD and SeqKD, and the gap grows with length",
         source=SOURCE + ", Figure 7",
         requires=[dict(method="minillm", other=["kd", "seqkd"], metric="exposure_bias", expect="lower"),
                   dict(method="minillm", other=["kd", "seqkd"], metric="exposure_bias@16", expect="lower",
                        vs_metric="exposure_bias@8", required=False,
                        note="delta at 16 tokens below delta at 8: the gap grows with length")],
         notes="The length part compares the exposure_bias@16 and @8 deltas (non-overlapping CIs); it is "
               "reported as not measured when the run lacks those sub-values."),
    dict(id="C5", text="Single-step and ranking variants lose some performance against MiniLLM but still beat "
                       "SFT and SeqKD",
         source=SOURCE + ", Section 3.2 / Table 4",
         requires=[dict(method=["single_step", "ranking"], other=["sft", "seqkd"], metric=PRIMARY),
                   dict(method=["single_step", "ranking"], other="minillm", metric=PRIMARY, expect="lower",
                        required=False, note="the loss against MiniLLM")],
         notes="Primary metric: validity on toy, Rouge-L elsewhere. The loss against MiniLLM is optional "
               "evidence: it can contradict the claim (variant significantly better) but need not be significant."),
    dict(id="C6", text="Each MiniLLM strategy matters: MiniLLM beats each of its ablations",
         source=SOURCE + ", Table 4", requires=[dict(method="minillm", other=ABLATIONS, metric=PRIMARY)]),
    dict(id="C7", text="No loss of diversity: Dist-4 within 1 point of SFT's and LM loss close to SFT's",
         source=SOURCE + ", Table 6",
         requires=[dict(method="minillm", other="sft", metric="dist4", expect="equivalent", margin=1.0),
                   dict(method="minillm", other="sft", metric="lm_loss", expect="equivalent", margin=0.1)],
         notes="Equivalence: supported when the delta's CI lies within ±margin (Dist-4: 1 point; LM loss: "
               "0.1 nats, our choice). Paper: Dist-4 99.0 vs 99.5, LM loss 3.95 vs 3.89."),
    dict(id="C8", text="MiniLLM gives more similar responses to one prompt: lower mode coverage than SFT on "
                       "multi-answer prompts",
         source=SOURCE + ", Section 4 (diversity)",
         requires=[dict(method="minillm", other="sft", metric="mode_coverage", expect="lower")],
         notes="mode_coverage is computed on multi-answer prompts only."),
    dict(id="C9", text="The gain of MiniLLM over SFT holds at every student size in the run",
         source=SOURCE + ", Figure 1 / Table 1", min_students=2,
         requires=[dict(method="minillm", other="sft", metric=PRIMARY)]),
    dict(id="C10", text="A MiniLLM student matches an SFT student 1.6-2x its size",
         source=SOURCE + ", Figure 1", min_students=2,
         requires=[dict(method="minillm", other="sft", metric=PRIMARY, expect="at_least", margin=1.0,
                        other_student="larger")],
         notes="'Matches' = non-inferior within 1 point of the primary metric, against the next larger "
               "student's SFT model; the evidence carries its size ratio (the paper's is 1.6-2x)."),
]

# The headline claims of KD methods published since MiniLLM (issue 16), on each task's primary metric.
# `fkl` and `rkl` are the FKL / RKL baselines of ABKD and AKL: same gold data, SFT init and CE ratio,
# only the divergence differs. The papers' own tables were not checked here (sota-methods.md §2g-4g).
PAPER_CLAIMS += [
    dict(id="TAID-1", text="TAID beats word-level KD",
         source="TAID (Shing et al., ICLR 2025, arXiv 2501.16937)",
         requires=[dict(method="taid", other="kd", metric=PRIMARY),
                   dict(method="taid", other="fkl", metric=PRIMARY, required=False,
                        note="TAID's own FKL baseline (distil_ratio 1)")],
         notes="kd is MiniLLM's word-level KD (0.5 CE + 0.5 forward KL, from the base student), as taid starts."),
    dict(id="ABKD-1", text="ABKD beats FKL and RKL",
         source="ABKD (Wang et al., ICML 2025, arXiv 2505.04560)",
         requires=[dict(method="abkd", other=["fkl", "rkl"], metric=PRIMARY)]),
    dict(id="AKL-1", text="AKL beats FKL and RKL",
         source="AKL (Wu et al., COLING 2025, arXiv 2404.02657)",
         requires=[dict(method="akl", other=["fkl", "rkl"], metric=PRIMARY)]),
    dict(id="DISTILLM2-1", text="DistiLLM-2 beats DistiLLM",
         source="DistiLLM-2 (Ko et al., ICML 2025, arXiv 2503.07067), abstract and main results",
         requires=[dict(method="distillm2", other="distillm", metric=PRIMARY)]),
    dict(id="SKD-1", text="Speculative KD beats supervised KD and on-policy KD (GKD)",
         source="Speculative KD (Xu et al., ICLR 2025, arXiv 2410.11325), abstract",
         requires=[dict(method="skd", other=["kd", "gkd"], metric=PRIMARY)]),
    dict(id="ULD-1", text="ULD beats distillation on teacher-generated text alone (SeqKD)",
         source="ULD (Boizard et al., arXiv 2402.12030), abstract",
         requires=[dict(method="uld", other="seqkd", metric=PRIMARY)],
         notes="The paper's comparison is across tokenizer families; with a shared vocabulary the claim "
               "is checked on the same footing."),
]
