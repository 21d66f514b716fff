"""``telescope``: Essential AI's telescoping search over (learning rate, weight decay) (arXiv 2505.02222 §3.3–3.4).

Algorithm 1 of the paper, with muP (so the hyperparameters transfer across widths) and Muon, on
one small Llama-style family whose width grows by adding heads of a fixed width
(``muonlab.experiments.telescoping`` plans the grids):

1. level 0 (stage 0): a full ``grid_points × grid_points`` grid of (lr, λ) at the base width
   ``widths[0]``, log-spaced by ``lr_spacing`` and ``wd_spacing`` around ``(lr_center, wd_center)``;
2. level k (stage k): at width ``widths[k]`` (twice the last), ``grid_points · 2^(−k)`` points per
   hyperparameter (4× fewer runs, each ≈ 4× dearer), the mesh halved in log space, centred on level
   k − 1's best point; it needs every run of level k − 1;
3. the final run at ``final_width`` at the last level's best point (the telescoped choice).

The check (stage 0, independent of the telescope): a brute-force ``brute_points × brute_points`` grid
at the top calibration width ``widths[-1]`` over level 0's box; while its best point sits on an edge, the
grid grows by the whole line one step beyond it (later stages) until the best is interior or the next line
would leave ``brute_lr_caps`` / ``brute_wd_caps`` (then "at the cap"). Seed noise: the telescoped choice and
the brute-force optimum are each trained again at the top calibration width with the fresh seeds
``check_seeds`` (the search runs all use ``search_seed``). Every run has the same tokens, batch,
sequence length and depth; only the width and (lr, λ) differ.

Run names carry the level, the width and the grid index (``L1-d64-i0-j2-s0``: lr index 0, λ index
2; a line the brute-force grid grew below its box has index ``m1``, ``m2``, ...), never a hyperparameter
value: until level k − 1 is done, level k's grid is provisional (centred on level k − 1's own centre).
"""


from ...study import Study
from . import plan, report

STUDY = Study(
    name="telescope",
    title="Telescoping (lr, weight decay) search under muP with Muon (Essential AI Algorithm 1)",
    claim="Essential AI (arXiv 2505.02222 §3.3–3.4, Algorithm 1, Figures 6, 13, 14): shrinking the grid around the "
          "previous optimum at each width doubling finds near-optimal (lr, λ) for O(C log N) compute, typically "
          "saving > 50 % against a full grid at the final width.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
)
