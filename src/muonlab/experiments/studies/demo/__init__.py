"""``demo``: Moonlight's central claim on a laptop CPU — Muon at AdamW's learning rate and weight decay.

The same small Llama-style model is trained on the built-in English corpus (the King James Bible)
with AdamW, and with Muon reusing AdamW's learning rate and weight decay unchanged: the
0.2·sqrt(max(A, B)) update scale (Moonlight, arXiv 2502.16982 §2.2) is what makes that possible.
Each optimizer is trained with several seeds (initialisation and data order; within a seed both
optimizers get the same ones), so the report gives the paired difference of the final losses with its
95 % interval (``plan``, ``report``). ``muonlab demo`` runs this study.

The demo is 96 steps of a short run: it says whether Muon trains faster *early* at AdamW's lr on this
workload. It is not Figure 3's compute-optimal scaling comparison (the ``scaling`` study is).
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="demo",
    title="muonlab demo: Muon vs AdamW at AdamW's lr and weight decay",
    claim="Moonlight (arXiv 2502.16982 §2.2): with its update scaled by 0.2·sqrt(max(A, B)), Muon reuses "
          "AdamW's learning rate and weight decay unchanged and trains to a lower loss than AdamW.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
)
