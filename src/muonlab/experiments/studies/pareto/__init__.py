"""``pareto``: Essential AI's compute–time plane (arXiv 2505.02222 §2.3, Figures 1–2) from the ``batch-size`` runs,
and Muon's Newton–Schulz overhead against the ≈ 5·d/B rule (§2.1.1; PAPERS.md §2.10, E2 and E4).

Essential AI plotted, for several target losses, the devices used against the wall-clock time to
reach the loss, one curve per optimizer across batch sizes, and found Muon's curve left of AdamW's:
"Muon explicitly expands the Pareto frontier on the compute-time tradeoff". This study rebuilds the
plane from the ``batch-size`` study's run folders (``batch_size_runs``: its output folder, run first
with ``muonlab experiment batch-size``): the steps each optimizer needed to reach each target at each
batch size, times a per-step time built from measurements and a stated model
(``timing``): a batch of ``B`` sequences on ``B / device_batch`` devices, each
doing the forward/backward of ``device_batch`` sequences, a ring all-reduce of the fp32 gradients at
``link_gb_per_s``, and the whole optimizer step (Newton–Schulz included) replicated on every device.

Its own runs are short *timing runs* (``timing_steps`` steps each, every step logged with its time
and its optimizer step's time) of both optimizers for every width of ``widths`` and batch of
``timing_batches``: they give the forward/backward and optimizer-step times of the frontier (at the
``batch-size`` model's width and per-device batches) and the measured Newton–Schulz overhead
``(t_opt,Muon − t_opt,AdamW) / t_fwd_bwd`` across widths and batch sizes, against the FLOP count
of the model's matrices and against 5·d/B. Timing runs are ordinary run folders, so the study plans,
resumes and costs them like any other; they train one at a time (``times_steps``: a neighbour would
slow each step), a few minutes in all.
"""


from ...study import Study
from . import plan, report

STUDY = Study(
    name="pareto",
    title="Compute–time plane: devices against time to a target loss, and Muon's Newton–Schulz overhead "
          "(Essential AI §2.3)",
    claim="Essential AI (arXiv 2505.02222 §2.3, Figures 1–2): Muon expands AdamW's compute–time Pareto frontier: at "
          "every device count it reaches a target loss sooner, consistently across thresholds and data; its extra "
          "cost per model FLOP is ≈ 5·d/B (§2.1.1, infra blog).",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    times_steps=True,
)
