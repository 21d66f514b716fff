"""``batch-size``: Essential AI's token ratio across batch sizes and the critical batch size (arXiv 2505.02222
§2.4–2.5, Figures 3–4, App. D.1 and F) at small scale, on both built-in corpora.

Essential AI found that Muon needs 10–15 % fewer tokens than AdamW to reach the same loss, that the
token ratio ``R_L(B) = T_AdamW / T_Muon`` stays above 1 and holds or grows as the batch size grows
past the critical batch size, and that Muon's token-optimal batch is larger. This study trains one
small dense model, for every batch size of ``batch_sizes`` (sequences of ``seq_len`` byte tokens),
with both optimizers and a fixed token budget per run, on the English corpus (the stand-in for
DCLM) and on the Python corpus (as the paper compares DCLM with Python):

1. per corpus and optimizer, a bracketed learning-rate sweep at the smallest batch and at the largest,
   each optimizer from its own grid (``<optimizer>_lrs_smallest``, ``<optimizer>_lrs_largest``;
   ``muonlab.analysis.lr_sweep.bracket``: the first seed over the grid, one ×``lr_step`` step past an
   edge while the best is there, then every seed at the best lr and its neighbours);
2. once both ends are chosen, every other batch at the learning rate interpolated in log space between
   the two ends' best (``interpolated_lr``): every seed at the middle batch, the first seed elsewhere
   (the budget does not allow three seeds at every batch). Runs are named after their lr and appear as
   the sweeps decide them.

Byte tokens keep every run within one epoch (the English corpus holds ≈ 4.0M byte tokens for
training), so each step's training loss is on a fresh batch; it is logged at every step, smoothed
(``muonlab.analysis.batch_size``) and read at several target losses. The analysis
(``report``) gives the token ratio, the extra tokens, and each optimizer's token-optimal
and critical batch sizes with the App. F fit.
"""


from ...study import Study
from . import plan, report

STUDY = Study(
    name="batch-size",
    title="Token ratio across batch sizes and the critical batch size: Muon vs AdamW (Essential AI §2.4–2.5)",
    claim="Essential AI (arXiv 2505.02222 §2.4–2.5, App. D.1, F): Muon needs 10–15 % fewer tokens than AdamW to "
          "reach the same loss; the token ratio R_L(B) = T_AdamW / T_Muon stays above 1 and holds or grows as the "
          "batch size grows past the critical batch size; Muon's token-optimal batch is larger.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
