"""``lr-transfer``: when does AdamW's learning rate carry over to Muon?

Moonlight (arXiv 2502.16982 §2.2) scales Muon's update to AdamW's RMS so that AdamW's learning rate and
weight decay can be reused. Whether the *optimal* lrs then coincide depends on the regime: muonlab's own
studies found Muon's optimum above AdamW's in short runs and the reuse costing Muon loss there. This study
maps it: for a grid of widths × batch sizes at a fixed token budget (so the batch sets the steps per run),
both optimizers' bracketed optimal lrs, their ratio, and the loss Muon loses when it reuses AdamW's, each
with an interval that includes the lr choice; and states a rule a user can apply (``report.rule``).
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="lr-transfer",
    title="When AdamW's learning rate carries over to Muon: optimal lrs over widths × steps per run",
    claim="Moonlight (arXiv 2502.16982 §2.2): with the update scaled to AdamW's RMS, AdamW's learning rate and "
          "weight decay carry over to Muon.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
