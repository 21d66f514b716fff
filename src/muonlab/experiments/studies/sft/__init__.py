"""``sft``: Moonlight's pretrain × fine-tune optimizer table (arXiv 2502.16982 §3.5.1, Table 6) at small scale.

Moonlight fine-tuned Muon- and AdamW-pretrained models with each optimizer and found the matched
Muon/Muon pair best, while "when the SFT optimizer differs from the pretraining optimizer, SFT with
Muon does not show a significant advantage over AdamW". This study pretrains the same small
Llama-style model with each optimizer, AdamW for longer so that both bases reach about the same
validation loss (``plan``), and fine-tunes each base with each optimizer on the built-in
``python-functions`` set (standard-library signature + docstring → body, loss on the body only) with
Moonlight's SFT schedule (no warmup, linear decay to 0), every cell at its own bracketed lr. The seed
sets the pretraining's initialisation and data order and the fine-tuning's data order; within a seed
both fine-tuning optimizers start from the same base and see the same batches, so every verdict is
paired over seeds (``report``).
"""

from ...study import Study
from . import plan, report

STUDY = Study(
    name="sft",
    title="Pretrain × fine-tune optimizer: does Muon/Muon win? (Moonlight Table 6)",
    claim="Moonlight (arXiv 2502.16982 §3.5.1, Table 6): Muon-pretrained + Muon-SFT is best; with a mismatched "
          "pair, Muon SFT shows no significant advantage over AdamW SFT.",
    presets=plan.PRESETS,
    plan=plan.plan,
    analyse=report.analyse,
    projected_plan=plan.projected_plan,
)
