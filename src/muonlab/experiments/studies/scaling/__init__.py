"""``scaling``: Moonlight's scaling-law comparison (arXiv 2502.16982 §3.2, Figure 3, Table 3) at small scale.

Moonlight fitted ``L = a·C^b`` to compute-optimal runs of Muon and of a tuned AdamW and found that Muon
reaches AdamW's loss with ≈ 52 % of its training FLOPs (≈ 2× compute efficiency), with Muon *reusing
AdamW's learning rate and weight decay*. This study trains several widths of one dense Llama-style
model in the paper's regime — 20 tokens per non-embedding parameter, at the batch size of Moonlight's
own compute-optimal fit, so thousands of steps — with both optimizers' learning rates bracketed
(``plan``), and reports the equal-loss compute ratio of Muon at AdamW's best lr (the paper's protocol)
and of Muon at its own best lr, each with a bootstrap interval that re-selects the lrs (``report``).
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="scaling",
    title="Scaling law: Muon vs tuned AdamW at compute-optimal budgets (Moonlight Figure 3)",
    claim="Moonlight (arXiv 2502.16982 §3.2, Figure 3): reusing AdamW's lr and weight decay, Muon reaches "
          "AdamW's loss with ≈ 52 % of its training FLOPs at compute-optimal budgets (≈ 2× compute efficiency).",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
