"""``update-rms``: Moonlight's update-RMS studies — the target-RMS sweep (Table 8) and the shape rules (Table 1).

Moonlight (arXiv 2502.16982 §2.2) scales Muon's orthogonalized update to a target RMS of 0.2, the
typical RMS of an AdamW update, so that AdamW's learning rate and weight decay carry over. Two of
its ablations check that choice, and this study repeats both at small scale, several seeds each
(the seed sets initialisation and data order; within a seed every variant gets the same ones):

- **Part (a), Table 8 (App. A)**: Muon with target update RMS r ∈ {0.05, 0.1, 0.2, 0.4, 0.8}
  (``scale="moonlight"``: r·sqrt(max(A, B))) at one shared lr and weight decay, plus AdamW at the
  same lr and weight decay. Paper: validation loss is U-shaped in r, best at 0.2–0.4; the weight
  RMS grows with r; every setting beats AdamW.
- **Part (b), Table 1 (§3.1)**: a model with a plain 2-layer GELU MLP (matrices [4H, H] and
  [H, 4H]), three rules at r = 0.2, each stopped at ``table1_fraction`` (20 %) of its lr schedule:
  Baseline 0.2·√H (``min_side``), Update Norm 0.2·O/RMS(O) (``update_norm``), Adjusted LR
  0.2·sqrt(max(A, B)) (``moonlight``). Paper: both shape-aware rules beat the Baseline (2.789 vs
  2.812); their MLP weight RMS is ≈ 2× the Baseline's; the query weight RMS is unchanged by
  Adjusted LR and larger under Update Norm.

Weight RMS per matrix type is read from each run's final checkpoint; the update RMS is the runs'
``update_rms/muon`` and ``update_rms/adamw`` telemetry, its median after warmup.
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="update-rms",
    title="muonlab update-rms: Muon's target update RMS (Moonlight Table 8) and shape-aware scaling (Table 1)",
    claim="Moonlight (arXiv 2502.16982 §2.2, App. A Table 8, §3.1 Table 1): a target update RMS of 0.2–0.4 trains best "
          "(val loss 3.325/3.314 vs 3.503 at 0.05 and 3.543 at 0.8, AdamW 3.679), and scaling by the matrix shape "
          "(0.2·sqrt(max(A, B)) or 0.2·O/RMS(O)) beats 0.2·√H for every matrix (2.789 vs 2.812), doubling the "
          "MLP weight RMS.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
)
