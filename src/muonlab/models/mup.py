"""muP, the maximal update parametrization, as a model option (``ModelConfig.parametrization``).

Tensor Programs V (Yang et al. 2022, arXiv 2203.03466, Table 3, the Adam column) writes every
weight as W = a(n)·w with w ~ N(0, b(n)) trained at learning rate c(n)·η₀; the Essential AI paper
(arXiv 2505.02222 §3.1, Figure 5) reproduces that table and uses it unchanged under Muon, where
c(n) multiplies Muon's own update scale 0.2·sqrt(max(A, B)) (``muonlab.optim.scaling``)::

                      input weights & biases   output weights   hidden weights
    multiplier a(n)   sqrt(fan_out)            1/sqrt(fan_in)   1
    init var   b(n)   1/fan_out                1/fan_in         1/fan_in
    lr         c(n)   1/sqrt(fan_out)          1/sqrt(fan_in)   1/fan_in

Here every factor is taken relative to a base width d₀ (``mup_base_width``), where muP *is* the
standard parametrization (SP): with the width multiplier m = d_model / d₀, a fan that grows with
the width is m times the base model's, so √fan becomes √m and σ = ``init_std`` (0.02) keeps its
meaning at d₀. Every width-like dimension is taken to scale with d_model (ffn_hidden, heads ×
head_dim, kv_lora_rank, expert_ffn_hidden — their derived defaults do), so one m serves every
matrix, as the ``mup`` package's ``width_mult`` does. What each parameter role gets (dense and MoE
model alike; routing roles of ``muonlab.optim.routing``; σ = ``init_std``, L = ``n_layers``)::

    role         parameters                                 column   multiplier          init std   lr factor  opt.
    -----------  -----------------------------------------  -------  ------------------  ---------  ---------  -----
    embedding    embed                                      input    √m on its output    σ/√m       1/√m       AdamW
    head         lm_head (untied)                           output   1/√m on its input   σ/√m       1/√m       AdamW
    embedding    embed = lm_head (tied)                     both     √m in, 1/√m out     σ/√m       1/√m       AdamW
    hidden       attention wq wk wv wo                      hidden   1                   σ/√m *     1/m **     Muon
    hidden       MLA wq_down wq_nope wq_rope wkv_down       hidden   1                   σ/√m *     1/m **     Muon
                 wk_rope wk_up wv_up wo
    hidden       MLP w_gate w_up w_down (GELU: w_in w_out)  hidden   1                   σ/√m *     1/m **     Muon
                 and the MoE's shared experts
    expert       MoE stacks w_gate w_up w_down [E, A, B]    hidden   1                   σ/√m *     1/m **     Muon
    router       MoE router [E, d]                          output   1/√m on its logits  σ/√m       1/√m **    Muon
    norm         every RMSNorm gain (MLA q_norm, kv_norm)   below    1                   1 (ones)   1          AdamW
    bias,scalar  none in these models                       below    1                   —          1          AdamW
    attention    the softmax scale of q·k                   below    1/√h (SP's), or √h₀/h with mup_base_head_dim

    *  the projections that write into the residual stream (wo, w_down, w_out, the experts' w_down)
       get σ/√(2Lm), SP's σ/√(2L) divided by √m.
    ** on top of Muon's update scale 0.2·√max(A, B) (for the stacks, of one expert's [A, B]).

Each coupled weight decay step is η₀·c·λ (the group's lr times λ), so λ transfers as the paper's
"coupled" decay does. Under SP every factor is 1 at every width, and the model runs exactly the
code it ran before this option existed.

Why these choices:

- Tying: the literal table (not its multiplier-free equivalents) gives the input and output
  columns one init variance (1/d) and one lr (1/√d) for the stored matrix, so a tied embedding
  is consistent; it is also the form under which the paper transfers λ.
- The router maps the width to a fixed number of experts, so it is an output weight. Muon's
  update on such a readout ([E, d], E fixed) moves its logits by Θ(η·c·d), as Adam's does, so the
  output column's 1/√m (with the 1/√m multiplier) is exact there too.
- Norm gains are initialised to 1, not drawn from N(0, b). Under Adam the table is invariant
  under a → aθ, b → b/θ², c → c/θ (Tensor Programs V's abc-symmetry); with θ = 1/√m the input
  column becomes multiplier 1, lr factor 1, the SP treatment. The MoE balance bias is a buffer
  with a width-free rate; routed_scaling_factor is unchanged.
- Hidden matrices under Muon: the 1/m factor sits on top of 0.2·√max(A, B) as the paper states.
  Muon's orthogonal update has all singular values ≈ lr·0.2·√n, so a hidden layer's features
  move by Θ(η₀·c·√n) per step and c = 1/m makes that shrink like 1/√m: nothing grows with width,
  but it is more conservative than the spectral condition (Yang, Simon & Bernstein 2023), under
  which c would be 1/√m. The coordinate check (``muonlab.experiments.coord_check``) measures it: after
  5 Muon steps at lr 0.01 the blocks' outputs fall like width^−0.1 … −0.45 over d = 64 … 1024 while
  the logits stay flat (docs/mup_coord_check.png); the lr-transfer plot (README "muP") shows the best
  lr staying put from d = 32 to 128 where SP's halves.
- Attention logits: Tensor Programs V uses q·k/d_head instead of q·k/√d_head, because trained
  q and k are correlated and q·k grows like d_head, not √d_head. That matters only when the head
  width grows. muonlab grows the width by adding heads of a fixed width (the presets' dial,
  ``model_config_for``'s d_model override, PAPERS.md E6), where d_head is constant and the two
  rules differ by a width-free constant that anchoring at the base sets to 1: muP keeps
  1/√d_head by default. For a family that widens the heads instead, set ``mup_base_head_dim`` =
  h₀, the query/key head width at the base width; muP then scales logits by √h₀/h (TP5's 1/d
  rule, equal to SP's 1/√h at h = h₀). SP always uses 1/√d_head.
"""

from __future__ import annotations

import math

from .config import PARAMETRIZATIONS, ModelConfig

__all__ = [
    "PARAMETRIZATIONS",
    "attention_scale",
    "embedding_multiplier",
    "init_std",
    "lr_factors",
    "lr_overrides",
    "output_multiplier",
    "width_mult",
]

def width_mult(config: ModelConfig) -> float:
    """m = d_model / mup_base_width under muP; 1 under SP."""
    return config.d_model / config.mup_base_width if config.parametrization == "mup" else 1.0


def init_std(config: ModelConfig) -> float:
    """The std of every normal init before the residual 1/√(2L): σ/√m (every column's 1/fan
    variance relative to the base); exactly ``init_std`` under SP."""
    if config.parametrization == "sp":
        return config.init_std
    return config.init_std / math.sqrt(width_mult(config))


def embedding_multiplier(config: ModelConfig) -> float:
    """What the embedding output is multiplied by: √m (the input column's a = √fan_out)."""
    return math.sqrt(width_mult(config))


def output_multiplier(config: ModelConfig) -> float:
    """What the LM head's and the router's inputs are multiplied by: 1/√m (a = 1/√fan_in)."""
    return 1.0 / math.sqrt(width_mult(config))


def attention_scale(config: ModelConfig, qk_head_dim: int) -> float | None:
    """The softmax scale of q·k for query/key heads of width h = ``qk_head_dim``.

    None means the usual 1/√h (SDPA's default): always under SP, and under muP unless
    ``mup_base_head_dim`` = h₀ is set, in which case it is √h₀ / h (module docstring).
    """
    if config.parametrization == "sp" or config.mup_base_head_dim is None:
        return None
    return math.sqrt(config.mup_base_head_dim) / qk_head_dim


def lr_factors(config: ModelConfig) -> dict[str, float]:
    """Learning-rate factor per routing role (``muonlab.optim.routing``); empty under SP.

    Muon groups' factors multiply on top of the update scale 0.2·√max(A, B).
    """
    if config.parametrization == "sp":
        return {}
    m = width_mult(config)
    readout = 1.0 / math.sqrt(m)
    return {"embedding": readout, "head": readout, "router": readout, "hidden": 1.0 / m, "expert": 1.0 / m,
            "norm": 1.0, "bias": 1.0, "scalar": 1.0}


def lr_overrides(config: ModelConfig, lr: float) -> dict[str, dict[str, float]]:
    """``role_overrides`` for ``muonlab.optim.param_groups``: each role's group starts at lr = ``lr`` × factor
    and records the factor as ``lr_factor``.

    An LR scheduler such as ``LambdaLR`` multiplies each group's *initial* lr, so the factor survives
    every step of the schedule. Empty under SP.
    """
    return {role: {"lr": lr * factor, "lr_factor": factor} for role, factor in lr_factors(config).items()}
