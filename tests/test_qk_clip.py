"""QK-Clip (Kimi K2 §2.1): per-head max logits against brute force, and the clipping rule on every attention kind.

- The per-head max pre-softmax logit recorded in the forward pass (causal, softmax scale included)
  equals a float64 brute-force computation over the full T×T score matrix, for multi-head
  attention, grouped-query attention, and MLA with and without query compression; query-chunked
  evaluation gives the same numbers as one chunk.
- After clipping, the max logit recomputed on the same batch is τ (within fp32 rounding) for every
  clipped head; rows of unclipped heads are bit-identical; the rescaled rows equal the rule's
  float64 expectation (√γ on q and k; GQA: √γ_min on the shared key, the remainder on each query;
  MLA: √γ on q^C and k^C, γ on q^R, the shared rotary key untouched).
- A user's own attention module (a fused qkv weight) takes part through the documented protocol.
- Muon(qk_clip=...) clips at the end of its step; the training loop logs the max logits and the
  clipping statistics; measuring leaves the trajectory unchanged.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from muonlab.models import MLA, Attention, ModelConfig, Transformer, causal_max_logits, rope_cos_sin
from muonlab.models.attention_logits import MaxLogitTracker
from muonlab.optim import Muon, QKClip, param_groups
from muonlab.rundir import read_metrics
from muonlab.train.loop import train

B, T = 3, 12


# ---- float64 references, written from the equations (not from the modules' code) ---------------------


def _rope64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + d/2) of x [B, T, ..., d] by the angles behind cos, sin [T, d/2], in complex float64."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    shape = (1, cos.shape[0]) + (1,) * (x.ndim - 3) + (half,)
    z = z * torch.complex(cos.double(), sin.double()).view(shape)
    return torch.cat([z.real, z.imag], dim=-1)


@torch.no_grad()
def _causal_max(logits: torch.Tensor) -> torch.Tensor:
    """Max over batch and j <= i of logits [B, H, T, T] -> [H]."""
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return logits.masked_fill(future, -math.inf).amax(dim=(0, 2, 3))


@torch.no_grad()
def _attention_logits64(attn: Attention, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """scale · q_i^h · k_j^{h // rep} for every head and pair, [B, H, T, T], float64."""
    H, Hk, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    x = x.double()
    q = _rope64((x @ attn.wq.weight.double().T).view(B, T, H, hd), cos, sin)
    k = _rope64((x @ attn.wk.weight.double().T).view(B, T, Hk, hd), cos, sin)
    k = k.repeat_interleave(H // Hk, dim=2)
    return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)


def _rms64(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    return x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight.double()


@torch.no_grad()
def _mla_logits64(mla: MLA, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """(q_i^C·k_{i}^C + q_i^R·k^R) / sqrt(n + r) for every head and pair (DeepSeek-V2 §2.1), float64."""
    H, n, r = mla.n_heads, mla.nope_dim, mla.rope_dim
    x = x.double()
    c_q = _rms64(x @ mla.wq_down.weight.double().T, mla.q_norm) if mla.compress_q else x
    q_nope = (c_q @ mla.wq_nope.weight.double().T).view(B, T, H, n)
    q_rope = _rope64((c_q @ mla.wq_rope.weight.double().T).view(B, T, H, r), cos, sin)
    c_kv = _rms64(x @ mla.wkv_down.weight.double().T, mla.kv_norm)
    k_nope = (c_kv @ mla.wk_up.weight.double().T).view(B, T, H, n)
    k_rope = _rope64(x @ mla.wk_rope.weight.double().T, cos, sin)  # [B, T, r]: one key for every head
    logits = torch.einsum("bihd,bjhd->bhij", q_nope, k_nope) + torch.einsum("bihd,bjd->bhij", q_rope, k_rope)
    return logits / math.sqrt(n + r)


# ---- modules ------------------------------------------------------------------------------------------


def _attention(n_kv_heads: int, seed: int = 0) -> tuple[Attention, tuple]:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=16, d_model=48, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=T)
    attn = Attention(config)
    for w in (attn.wq.weight, attn.wk.weight):
        nn.init.normal_(w, std=0.3)
    return attn, rope_cos_sin(config.head_dim, T, config.rope_theta)


def _mla(q_lora_rank: int, seed: int = 0) -> tuple[MLA, tuple]:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=16, d_model=48, n_layers=1, n_heads=3, attention="mla", kv_lora_rank=16,
                         qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=8, q_lora_rank=q_lora_rank, max_seq_len=T)
    mla = MLA(config)
    for module in mla.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.3)
        elif isinstance(module, nn.RMSNorm):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return mla, rope_cos_sin(6, T, config.rope_theta)


def _recorded(module: nn.Module, x: torch.Tensor, cos, sin) -> torch.Tensor:
    """The module's recorded max logits of one training forward on x."""
    module.train()
    module.track_max_logits, module.max_logits = True, None
    module(x, cos, sin)
    recorded, module.max_logits = module.max_logits, None
    return recorded


def _inputs(d: int = 48) -> torch.Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(7))


# ---- the per-head max logit ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_max_logits_equal_brute_force(n_kv_heads):
    attn, (cos, sin) = _attention(n_kv_heads)
    x = _inputs()
    logits = _attention_logits64(attn, x, cos, sin)
    expected = _causal_max(logits)
    assert not torch.allclose(logits.amax(dim=(0, 2, 3)), expected, rtol=1e-3)  # the mask matters here
    torch.testing.assert_close(_recorded(attn, x, cos, sin).double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("q_lora_rank", [0, 12], ids=["no-q-compression", "q-compression"])
def test_mla_max_logits_equal_brute_force(q_lora_rank):
    mla, (cos, sin) = _mla(q_lora_rank)
    x = _inputs()
    logits = _mla_logits64(mla, x, cos, sin)
    expected = _causal_max(logits)
    assert not torch.allclose(logits.amax(dim=(0, 2, 3)), expected, rtol=1e-3)
    torch.testing.assert_close(_recorded(mla, x, cos, sin).double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("budget", [1, 3 * 4 * T * 5, 1 << 20], ids=["one-row", "five-rows", "one-chunk"])
def test_query_chunks_give_the_brute_force_max(budget):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(B, 4, T, 8, generator=g), torch.randn(B, 2, T, 8, generator=g)
    logits = torch.einsum("bhid,bhjd->bhij", q.double(), k.double().repeat_interleave(2, dim=1)) * 0.3
    torch.testing.assert_close(causal_max_logits(q, k, 0.3, score_budget=budget).double(), _causal_max(logits),
                               rtol=1e-6, atol=0)


def test_recording_needs_the_flag_and_training_mode_and_keeps_the_max_over_forwards():
    attn, (cos, sin) = _attention(2)
    x1, x2 = _inputs(), 3 * torch.randn(B, T, 48, generator=torch.Generator().manual_seed(8))
    attn.train()
    attn(x1, cos, sin)
    assert attn.max_logits is None  # not asked
    attn.track_max_logits = True
    attn.eval()
    attn(x1, cos, sin)
    assert attn.max_logits is None  # evaluation forwards are never recorded
    attn.train()
    attn(x1, cos, sin)
    attn(x2, cos, sin)
    both = torch.maximum(_causal_max(_attention_logits64(attn, x1, cos, sin)),
                         _causal_max(_attention_logits64(attn, x2, cos, sin)))
    torch.testing.assert_close(attn.max_logits.double(), both, rtol=1e-5, atol=0)


def test_bf16_autocast_records_fp32_max_logits():
    attn, (cos, sin) = _attention(4)
    x = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recorded = _recorded(attn, x, cos, sin)
    assert recorded.dtype == torch.float32
    torch.testing.assert_close(recorded.double(), _causal_max(_attention_logits64(attn, x, cos, sin)),
                               rtol=0.05, atol=0)  # q, k rounded to bf16 by the autocast projections


# ---- clipping ------------------------------------------------------------------------------------------


def _rows(weight: torch.Tensor, block: int, width: int) -> torch.Tensor:
    return weight.detach()[block * width : (block + 1) * width]


def _clip_once(module: nn.Module, x, cos, sin, tau: float) -> QKClip:
    qk = QKClip(module, tau=tau)
    module(x, cos, sin)
    qk.apply()
    return qk


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_clipped_attention_heads_reach_tau_and_the_others_keep_their_logits(n_kv_heads):
    attn, (cos, sin) = _attention(n_kv_heads)
    with torch.no_grad():  # heads 0 and 1 (one GQA group) far above the others
        attn.wq.weight[:12].mul_(20)
        attn.wq.weight[12:24].mul_(12)
    x = _inputs()
    before, recorded = _causal_max(_attention_logits64(attn, x, cos, sin)), _recorded(attn, x, cos, sin)
    tau = 1.5 * float(before[2:].max())
    assert before[0] > before[1] > tau
    wq, wk = attn.wq.weight.detach().clone(), attn.wk.weight.detach().clone()

    _clip_once(attn, x, cos, sin, tau)

    gamma = torch.where(before > tau, tau / before, torch.ones_like(before))
    after = _recorded(attn, x, cos, sin)
    torch.testing.assert_close(after[:2].double(), torch.full((2,), tau, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(after[2:], recorded[2:], rtol=1e-5, atol=0)  # a shared key may have moved: rounding
    if n_kv_heads == 4:
        assert torch.equal(after[2:], recorded[2:])
    rep, hd = 4 // n_kv_heads, 12
    for g in range(n_kv_heads):
        key_scale = gamma[g * rep : (g + 1) * rep].min().sqrt()
        torch.testing.assert_close(_rows(attn.wk.weight, g, hd).double(), _rows(wk, g, hd).double() * key_scale,
                                   rtol=1e-6, atol=0)
        for h in range(g * rep, (g + 1) * rep):
            expected = _rows(wq, h, hd).double() * gamma[h] / key_scale
            torch.testing.assert_close(_rows(attn.wq.weight, h, hd).double(), expected, rtol=1e-6, atol=0)
    untouched_groups = [g for g in range(n_kv_heads) if g * rep >= 2]  # groups without head 0 or 1
    assert len(untouched_groups) == {4: 2, 2: 1, 1: 0}[n_kv_heads]
    for g in untouched_groups:
        assert torch.equal(_rows(attn.wk.weight, g, hd), _rows(wk, g, hd))
        for h in range(g * rep, (g + 1) * rep):
            assert torch.equal(_rows(attn.wq.weight, h, hd), _rows(wq, h, hd))


@pytest.mark.parametrize("q_lora_rank", [0, 12], ids=["no-q-compression", "q-compression"])
def test_mla_clipping_scales_qc_kc_by_sqrt_gamma_and_qr_by_gamma_leaving_the_shared_rope_key(q_lora_rank):
    mla, (cos, sin) = _mla(q_lora_rank)
    with torch.no_grad():
        mla.wq_nope.weight[8:16].mul_(15)  # head 1
        mla.wq_rope.weight[6:12].mul_(15)
    x = _inputs()
    before, recorded = _causal_max(_mla_logits64(mla, x, cos, sin)), _recorded(mla, x, cos, sin)
    tau = 1.5 * float(before[[0, 2]].max())
    assert before[1] > tau
    saved = {name: p.detach().clone() for name, p in mla.named_parameters()}

    _clip_once(mla, x, cos, sin, tau)

    gamma = tau / before[1]
    after = _recorded(mla, x, cos, sin)
    assert float(after[1]) == pytest.approx(tau, rel=1e-5)
    assert torch.equal(after[[0, 2]], recorded[[0, 2]])
    rows = {"wq_nope.weight": (8, gamma.sqrt()), "wk_up.weight": (8, gamma.sqrt()), "wq_rope.weight": (6, gamma)}
    for name, p in mla.named_parameters():
        if name not in rows:  # wk_rope (the shared k^R), wkv_down, kv_norm, wv_up, wo, wq_down, q_norm
            assert torch.equal(p, saved[name]), name
            continue
        width, factor = rows[name]
        for h in (0, 2):
            assert torch.equal(_rows(p, h, width), _rows(saved[name], h, width)), (name, h)
        torch.testing.assert_close(_rows(p, 1, width).double(), _rows(saved[name], 1, width).double() * factor,
                                   rtol=1e-6, atol=0)


class FusedAttention(MaxLogitTracker, nn.Module):
    """A user's attention: one fused qkv weight, 2 heads, no RoPE; declares its q and k rows as slices."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.d, self.heads = d, heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)

    def forward(self, x, cos=None, sin=None):
        Bx, Tx, _ = x.shape
        q, k, v = (t.view(Bx, Tx, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(self.d, dim=-1))
        self.record_max_logits(q, k, (self.d // self.heads) ** -0.5)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(Bx, Tx, self.d)

    def qk_clip_terms(self):
        return [((self.qkv.weight, slice(0, self.d)), (self.qkv.weight, slice(self.d, 2 * self.d)))]


def test_a_users_module_with_a_fused_qkv_weight_is_clipped_through_the_protocol():
    torch.manual_seed(0)
    attn = FusedAttention()
    nn.init.normal_(attn.qkv.weight, std=1.0)
    with torch.no_grad():
        attn.qkv.weight[:8].mul_(10)  # query rows of head 0
    x = torch.randn(B, T, 16)
    before = _recorded(attn, x, None, None)
    tau = float(before.mean())
    assert before[0] > tau >= before[1]
    saved = attn.qkv.weight.detach().clone()
    _clip_once(attn, x, None, None, tau)
    after = _recorded(attn, x, None, None)
    assert float(after[0]) == pytest.approx(tau, rel=1e-5) and after[1] == before[1]
    assert torch.equal(attn.qkv.weight[8:16], saved[8:16]) and torch.equal(attn.qkv.weight[24:40], saved[24:40])
    assert torch.equal(attn.qkv.weight[32:], saved[32:])  # the values


def test_muon_clips_at_the_end_of_its_step_on_an_mla_moe_model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, d_model=48, n_layers=2, n_heads=3, attention="mla", n_routed_experts=4,
                         top_k=2, n_shared_experts=1, first_k_dense=1, max_seq_len=T, init_std=0.3)
    model = Transformer(config)
    qk = QKClip(model, tau=2.0)
    optimizer = Muon(param_groups(model), lr=0.0, weight_decay=0.0, qk_clip=qk)
    x = torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(1))
    model(x, x).backward()
    optimizer.step()
    stats = qk.stats()
    assert set(stats) == {"max_logit/layer0", "max_logit/layer1", "qk_clip/heads_clipped", "qk_clip/min_gamma"}
    assert stats["max_logit/layer0"] > 2.0 and stats["qk_clip/heads_clipped"] >= 1
    assert stats["qk_clip/min_gamma"] == pytest.approx(2.0 / max(stats["max_logit/layer0"], stats["max_logit/layer1"]))
    model(x, x)  # lr 0: only the clipping changed the weights; block 0 sees the same input again
    layer0 = model.layers[0].attn.max_logits
    assert float(layer0.max()) == pytest.approx(2.0, rel=1e-5)


def test_bad_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="tau must be a positive number"):
        QKClip(nn.Linear(2, 2), tau=-1.0)
    with pytest.raises(ValueError, match="found no attention module in Linear"):
        QKClip(nn.Linear(2, 2), tau=100.0)
    attn, (cos, sin) = _attention(4)
    qk = QKClip(attn, tau=1.0)
    with pytest.raises(ValueError, match="no recorded max logits after the step"):
        qk.apply()
    attn.qk_clip_terms = lambda: [((attn.wq.weight, slice(0, 10)), None)]
    attn(_inputs(), cos, sin)
    with pytest.raises(ValueError, match="'', qk_clip_terms\\(\\)\\[0\\]: 10 query rows do not split into 4 heads"):
        qk.apply()


def test_optim_does_not_import_models():
    code = "import sys, muonlab.optim; print(sorted(m for m in sys.modules if m.startswith('muonlab.models')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---- the training loop ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("single_thread")
def test_training_logs_max_logits_and_clipping(tiny_config):
    config = tiny_config("clip", qk_clip_tau=0.08, log_every=2, telemetry_every=5)
    train(config)
    rows = [r for r in read_metrics(config.run_dir) if "loss" in r]
    assert rows and all({"max_logit/layer0", "max_logit/layer1", "qk_clip/heads_clipped", "qk_clip/min_gamma"} <= set(r)
                        for r in rows)
    assert sum(r["qk_clip/heads_clipped"] for r in rows) > 0
    assert min(r["qk_clip/min_gamma"] for r in rows) < 1.0


@pytest.mark.usefixtures("single_thread")
def test_max_logit_telemetry_without_clipping_leaves_the_trajectory_unchanged(tiny_config):
    measured, plain = tiny_config("measured", log_every=2, telemetry_every=5), tiny_config("plain", telemetry_every=0,
                                                                                          log_every=2)
    train(measured)
    train(plain)
    rows = read_metrics(measured.run_dir)
    telemetry_steps = {r["step"] for r in rows if "max_logit/layer0" in r}
    assert telemetry_steps == {1, 5, 10, 15, 20}
    assert not any(k.startswith("qk_clip/") for r in rows for k in r)
    assert all(0 < r["max_logit/layer1"] < 10 for r in rows if r["step"] in telemetry_steps)
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert losses == {r["step"]: r["loss"] for r in read_metrics(plain.run_dir) if "loss" in r}
