"""``variants``: Muon's 2026 refinements against Moonlight Muon, each at its own bracketed learning rate.

Three refinements of the Muon update are in wide use, each with a claim: NorMuon (arXiv 2510.05491) normalizes
each row of the orthogonalized update by a running second moment and reports better training than Muon;
cautious weight decay (arXiv 2510.12402) decays only the coordinates where update and weight agree in sign and
reports a lower final loss; per-head orthogonalization (Kimi K3 §2.5, GLM-5's Muon Split) orthogonalizes each
attention head's block on its own and is cheaper, while users disagree on whether it costs loss. The study
trains Moonlight Muon, each refinement, all three, and AdamW, every arm at its own bracketed lr with every seed
at its optimum, on a dense model and on the MoE/MLA model, and checks each claim by a paired verdict over seeds
(``claims``).
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="variants",
    title="Muon's refinements (per-head, NorMuon, cautious weight decay) against Moonlight Muon, each at its own lr",
    claim="NorMuon (arXiv 2510.05491) trains better than Muon (+11 % efficiency at 1.1B); cautious weight decay "
          "(arXiv 2510.12402) lowers the final loss; per-head orthogonalization (Kimi K3 §2.5, GLM-5) is not worse.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
