"""``weight-decay``: Moonlight's weight-decay ablation (arXiv 2502.16982 §2.2, Figure 2; App. D) at small scale.

Moonlight trains an 800M model on 100B tokens (≈ 5× its compute-optimal tokens) with AdamW, vanilla
Muon and Muon with weight decay: vanilla Muon leads early (by 0.023 at iteration 24k), but its
weights and layer outputs keep growing in RMS and Muon with weight decay wins late (by 0.017 at
66k). App. D adds that weight decay on the RMSNorm gains keeps every layer's output RMS bounded, and
that the max attention logit grows more under Muon early in training.

The study trains one small model over an over-trained horizon (≈ 90 tokens per non-embedding
parameter, ≈ 4.4× Chinchilla's 20, where vanilla Muon's weight RMS is still growing) in four arms,
several seeds each (the seed sets initialisation and data order; within a seed every arm gets the same
ones): AdamW, Muon without weight decay, Muon with weight decay on the matrices at a λ chosen by a
bracketed sweep at this horizon, and Muon at that λ with the RMSNorm gains decayed too (``plan``; the
gains are not decayed by default). Every verdict is paired over seeds (``claims``). Every run logs the
validation loss on the fixed held-out slice, and at telemetry steps the weight RMS per parameter
type, every block's output RMS and the max attention logit per layer (``muonlab.train.weight_telemetry``).
"""


from ...study import Study
from . import plan, report

STUDY = Study(
    name="weight-decay",
    title="muonlab weight-decay: Muon needs weight decay when over-training (Moonlight Figure 2, App. D)",
    claim="Moonlight (arXiv 2502.16982 §2.2, Figure 2): over-training 5× past compute-optimal, vanilla Muon leads "
          "early (0.023 at 24k iterations) but its weight and output RMS keep growing, and Muon with weight decay "
          "wins late (0.017 at 66k); App. D: weight decay on the norm gains bounds every layer's output RMS.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
