"""A Llama-style decoder-only language model, optionally in Moonlight's DeepSeek-V3 shape.

Pre-norm blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with RMSNorm, rotary position
embeddings (RoPE, Su et al. 2021), causal scaled-dot-product attention with grouped-query heads
or multi-head latent attention (``mla.MLA``), a SwiGLU MLP (Shazeer 2020), a plain GELU MLP or a
mixture-of-experts layer (``moe.MoE``), no biases, and a tied or untied LM head.

Module names are a contract: the optimizer's routing table (``muonlab.optim.routing``) and the
SVD-entropy groups (``muonlab.analysis.spectra``) place parameters by these names, so ``embed``,
``layers.{i}.attn.{wq,wk,wv,wo}`` (MLA: ``{wq_down,wq_nope,wq_rope,wkv_down,wk_rope,wk_up,wv_up,wo}``
and ``{q_norm,kv_norm}``), ``layers.{i}.mlp.{w_gate,w_up,w_down}`` (or ``{w_in,w_out}``; MoE:
``router``, the stacks ``w_gate,w_up,w_down`` and ``shared.{w_gate,w_up,w_down}``), ``*_norm``,
``norm`` and ``lm_head`` must not be renamed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_logits import MaxLogitTracker
from .config import ModelConfig
from .layers import GeluMLP, SwiGLU, apply_rope, rope_cos_sin
from .mla import MLA
from .moe import MoE
from .mup import attention_scale, embedding_multiplier, init_std, output_multiplier
from .output_rms import OutputRMSTracker

IGNORE_INDEX = -100
"""Targets equal to this are left out of the loss (F.cross_entropy's default)."""


# ---- layers -------------------------------------------------------------------------------------


class Attention(MaxLogitTracker, nn.Module):
    """Causal multi-head attention with grouped-query K/V heads and RoPE on q and k.

    wq, wo: [d_model, d_model]; wk, wv: [n_kv_heads * head_dim, d_model] — whole matrices, not per
    head, so Muon orthogonalizes each as one matrix. Query head h reads K/V head h // (n_heads / n_kv_heads).
    With ``track_max_logits`` set, training forwards record each head's max logit (``max_logits``,
    see ``attention_logits``) for QK-Clip (``muonlab.optim.QKClip``). Logits are scaled by 1/sqrt(head_dim)
    (under muP with ``mup_base_head_dim`` set, by ``mup.attention_scale``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.scale = attention_scale(config, config.head_dim)  # None: SDPA's default 1/sqrt(head_dim)
        d = config.d_model
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, config.kv_dim, bias=False)
        self.wv = nn.Linear(d, config.kv_dim, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x: [B, T, d_model]; cos, sin: [T, head_dim/2] -> [B, T, d_model]."""
        B, T, _ = x.shape
        # Head counts come from the projections: under tensor parallelism (muonlab.parallel.mesh)
        # each rank computes n_heads / tp query and n_kv_heads / tp key/value heads.
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        heads, kv_heads = q.shape[1], k.shape[1]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.record_max_logits(q, k, self.head_dim**-0.5 if self.scale is None else self.scale)
        if kv_heads != heads:
            # Expand K/V explicitly rather than SDPA's enable_gqa, which not every backend supports
            # (an unsupported flag silently falls back to the slow math kernel on some versions).
            rep = heads // kv_heads
            k = k[:, :, None].expand(B, kv_heads, rep, T, self.head_dim).reshape(B, heads, T, -1)
            v = v[:, :, None].expand(B, kv_heads, rep, T, self.head_dim).reshape(B, heads, T, -1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # [B, H, T, hd]
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def qk_clip_terms(self) -> list[tuple[Tensor, Tensor]]:
        """QK-Clip's row blocks: query head h is rows [h·hd, (h+1)·hd) of ``wq``, key head g rows
        [g·hd, (g+1)·hd) of ``wk`` (a key head shared by a group of query heads under GQA)."""
        return [(self.wq.weight, self.wk.weight)]


OUTPUT_PROJECTIONS = ("wo", "w_down", "w_out")
"""Names of linear layers that write into the residual stream; their init std is divided by sqrt(2*n_layers)."""


def build_attention(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The attention module of block ``layer_idx``: ``Attention`` (MHA/GQA) or ``MLA``, by ``config.attention``.

    Called as ``attn(x, cos, sin)`` with RoPE tables of width ``config.rope_dim // 2``; output
    [B, T, d_model]. ``ModelConfig.attn_params`` must count what this builds.
    """
    return MLA(config) if config.attention == "mla" else Attention(config)


def build_mlp(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The feed-forward module of block ``layer_idx``: an ``MoE`` layer where ``config.is_moe_layer``
    says so, else the dense SwiGLU or GELU MLP.

    Its output must have shape [B, T, d_model] for input [B, T, d_model]. ``ModelConfig.mlp_params``
    must count what this builds.
    """
    assert config.ffn_hidden is not None
    if config.is_moe_layer(layer_idx):
        return MoE(config)
    if config.mlp == "swiglu":
        return SwiGLU(config.d_model, config.ffn_hidden)
    return GeluMLP(config.d_model, config.ffn_hidden)


class Block(OutputRMSTracker, nn.Module):
    """Pre-norm transformer block: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)).

    With ``track_output_rms`` set, training forwards record the output's sum of squares
    (``output_rms``), the residual stream's RMS after this block.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = build_attention(config, layer_idx)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = build_mlp(config, layer_idx)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        x = x + self.mlp(self.mlp_norm(x))
        self.record_output_rms(x)
        return x


# ---- the model ----------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Decoder-only LM: embed -> n_layers x Block -> norm -> lm_head.

    ``forward(input_ids)`` gives logits [B, T, vocab]; ``forward(input_ids, targets)`` gives the
    mean next-token cross-entropy (fp32 scalar; targets == -100 are ignored; the caller shifts,
    i.e. targets[b, t] is the token that should follow input_ids[b, t]).

    Weights are initialised in ``__init__`` (deterministic under ``torch.manual_seed``); call
    ``init_weights()`` again after building on the meta device and ``to_empty()``.

    Under ``parametrization="mup"`` the embedding output is multiplied by √m and the LM head's input
    by 1/√m (m = d_model / mup_base_width; the table in ``muonlab.models.mup``); under SP by nothing.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.embed_multiplier, self.output_multiplier = embedding_multiplier(config), output_multiplier(config)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cos_sin(config.rope_dim, config.max_seq_len, config.rope_theta, self.embed.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def _reset_rope(self) -> None:
        """Recompute the fp32 RoPE tables on their current device."""
        c = self.config
        cos, sin = rope_cos_sin(c.rope_dim, c.max_seq_len, c.rope_theta, self.rope_cos.device)
        self.rope_cos, self.rope_sin = cos, sin

    def _apply(self, fn: Any, recurse: bool = True) -> Transformer:
        # model.to(torch.bfloat16) would round the RoPE tables to bf16 (angles off by ~1e-2 at
        # position 1000) and to_empty() leaves them as garbage; rebuild them in fp32 after any move.
        # to_empty() from the meta device also gives embed and lm_head separate tensors; re-tie.
        super()._apply(fn, recurse)
        if self.config.tie_embeddings and self.lm_head.weight is not self.embed.weight:
            self.lm_head.weight = self.embed.weight
        self._reset_rope()
        return self

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) for every linear and embedding weight, divided by sqrt(2*n_layers)
        for the output projections (wo, w_down, w_out, GPT-2's residual scaling); RMSNorm weights = 1;
        MoE layers initialise their expert stacks and router the same way (``MoE.init_weights``).
        Under muP every std is divided by √m (``mup.init_std``).

        With ``seed``, draws from a private generator, so the result does not depend on (or advance)
        the global RNG. Also rebuilds the RoPE tables.
        """
        std = init_std(self.config)
        out_std = std / math.sqrt(2 * self.config.n_layers)
        gens: dict[torch.device, torch.Generator] = {}

        def normal_(w: Tensor, s: float) -> None:
            if w.is_meta:
                return
            gen = None
            if seed is not None:
                if w.device not in gens:
                    gens[w.device] = torch.Generator(device=w.device).manual_seed(seed)
                gen = gens[w.device]
            w.normal_(0.0, s, generator=gen)

        normal_(self.embed.weight, std)
        for name, module in self.layers.named_modules():
            if isinstance(module, nn.Linear):
                normal_(module.weight, out_std if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS else std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MoE):
                module.init_weights(normal_, std, out_std)
        nn.init.ones_(self.norm.weight)
        if not self.config.tie_embeddings:
            normal_(self.lm_head.weight, std)
        self._reset_rope()

    def forward(self, input_ids: Tensor, targets: Tensor | None = None) -> Tensor:
        """input_ids: [B, T] int64 -> logits [B, T, vocab]; or, with targets [B, T], the mean CE loss (fp32 scalar)."""
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(
                f"Input length {T} exceeds ModelConfig.max_seq_len={self.config.max_seq_len}; "
                f"use sequences of at most {self.config.max_seq_len} tokens or raise max_seq_len."
            )
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(input_ids)
        if self.embed_multiplier != 1.0:
            x = x * self.embed_multiplier
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        logits = self.lm_head(x if self.output_multiplier == 1.0 else x * self.output_multiplier)
        if targets is None:
            return logits
        # Cross-entropy on fp32 logits: a bf16 log-softmax over a large vocab loses ~2 digits.
        loss = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        for _, moe in self._moe_layers():
            if moe.aux_loss is not None:  # the sequence-wise balance loss, on when moe_aux_loss_coef > 0
                loss = loss + moe.aux_loss
        return loss

    def _moe_layers(self) -> list[tuple[int, MoE]]:
        """(block index, MoE layer) for every MoE block."""
        return [(i, block.mlp) for i, block in enumerate(self.layers) if isinstance(block.mlp, MoE)]

    def after_optimizer_step(self) -> None:
        """Non-gradient updates after each optimizer step: every MoE layer's balance-bias update."""
        for _, moe in self._moe_layers():
            moe.update_balance_bias()

    def telemetry(self) -> dict[str, float]:
        """MoE routing statistics since the last call (then reset), per layer and averaged over layers:
        ``moe/load_max_over_mean[/<layer>]``, ``moe/router_entropy[/<layer>]``, ``moe/bias_abs_mean[/<layer>]``
        and, with the balance loss on, ``moe/aux_loss[/<layer>]`` (see ``MoE.telemetry``). Empty for a dense model.
        """
        rows: dict[str, float] = {}
        per_stat: dict[str, list[float]] = {}
        for i, moe in self._moe_layers():
            for stat, value in moe.telemetry().items():
                rows[f"moe/{stat}/{i}"] = value
                per_stat.setdefault(stat, []).append(value)
        rows.update({f"moe/{stat}": sum(values) / len(values) for stat, values in per_stat.items()})
        return rows
