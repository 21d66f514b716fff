"""``qk-clip``: MuonClip's QK-Clip (Kimi K2, arXiv 2507.20534 §2.1) at small scale.

Moonlight (arXiv 2502.16982 App. D) notes that attention logits grow large under Muon; scaling Muon
to Kimi K2, the max logit exploded, and QK-Clip fixed it: after each optimizer step, every head whose
max pre-softmax logit S_max^h = max q_i·k_j/√d exceeded τ has its query and key weights scaled by
√(τ / S_max^h) each, so that its logit on that batch becomes τ. K2 reports no loss penalty.

The study trains one small Llama-style model (no QK-norm: muonlab's attention has none) in a setting
where the max logit grows large under Muon (a high learning rate, no weight decay, two heads of 64),
with three variants and several seeds each (the seed sets initialisation and data order; within a
seed every variant gets the same ones): Muon, Muon + QK-Clip at τ, and AdamW at the same (shared) lr;
and each optimizer's own bracketed lr sweep (``plan``), so that the max logits of Muon and AdamW are
also compared with each at its own best lr (``report``). Max logits are logged at every step with
QK-Clip on (pre-clip, as the clipping reads them) and at every ``telemetry_every`` steps otherwise. The
report says whether QK-Clip bounds the max logit at τ, whether it costs loss (paired over seeds), and
whether Muon's max logit is above AdamW's at their own lrs and at the shared one.
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="qk-clip",
    title="muonlab qk-clip: QK-Clip bounds Muon's max attention logit (MuonClip, Kimi K2)",
    claim="Kimi K2 (arXiv 2507.20534 §2.1): under Muon the max attention logit explodes without QK-norm; "
          "QK-Clip (rescale a head's W_q, W_k by √(τ/S_max) after each step when S_max > τ) caps it at τ "
          "with no loss penalty.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
