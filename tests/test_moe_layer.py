"""MoE layer: forward and gradients against a per-token, per-expert loop; routing; the balance bias."""

import math

import pytest
import torch
import torch.nn.functional as F

from muonlab.models import ModelConfig, MoE
from muonlab.models.moe import (
    balance_bias_update,
    bucketed_group_sizes,
    expert_layout,
    grouped_mm_supported,
    moe_experts,
    route,
    routed_scaling_factor,
    sequence_balance_loss,
)

D, E, K, F_E = 16, 8, 3, 12


def moe_config(**kw):
    base = dict(vocab_size=32, d_model=D, n_layers=2, n_heads=2, n_routed_experts=E, n_shared_experts=2, top_k=K,
                expert_ffn_hidden=F_E, routed_scaling_factor=2.0, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def make_moe(seed=0, **kw):
    torch.manual_seed(seed)
    moe = MoE(moe_config(**kw))
    with torch.no_grad():  # bigger than the init so routing and outputs are far from ties and zero
        for p in (moe.router, moe.w_gate, moe.w_up, moe.w_down):
            p.normal_(0.0, 0.5)
        moe.balance_bias.normal_(0.0, 0.3)  # nonzero: it must change selection, never the weights
    return moe


def swiglu_by_hand(x, w_gate, w_up, w_down):
    """One expert on one token, from the equation: W2 (silu(W1 x) * W3 x)."""
    a = w_gate @ x
    return w_down @ (a * torch.sigmoid(a) * (w_up @ x))


def reference_moe(moe, x):
    """y_t = sum over the top-k of (s + b) of  g_i * FFN_i(x_t)  +  shared(x_t), token by token."""
    outputs = []
    for xt in x.reshape(-1, x.shape[-1]):
        scores = [torch.sigmoid(moe.router[i] @ xt) for i in range(E)]
        chosen = sorted(range(E), key=lambda i: float(scores[i].detach() + moe.balance_bias[i]), reverse=True)[:K]
        total = sum(scores[i] for i in chosen)
        y = swiglu_by_hand(xt, moe.shared.w_gate.weight, moe.shared.w_up.weight, moe.shared.w_down.weight)
        for i in chosen:
            y = y + moe.scale * scores[i] / total * swiglu_by_hand(xt, moe.w_gate[i], moe.w_up[i], moe.w_down[i])
        outputs.append(y)
    return torch.stack(outputs).view_as(x)


@pytest.mark.parametrize("bucket", [True, False], ids=["bucketed", "exact-groups"])
@pytest.mark.parametrize("backend", ["grouped_mm", "padded_bmm"])
def test_forward_and_gradients_match_per_token_loop(backend, bucket, single_thread):
    if backend == "grouped_mm" and not grouped_mm_supported("cpu", torch.float32, D, F_E):
        pytest.skip("this torch has no grouped GEMM on CPU")
    moe = make_moe()
    moe.backend, moe.bucket = backend, bucket  # bucket=False: the GPU layout, exercised on CPU
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1), requires_grad=True)
    probe = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(2))

    out = moe(x)
    (out * probe).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    fast_x_grad = x.grad.clone()
    moe.zero_grad()
    x.grad = None

    ref = reference_moe(moe, x)
    (ref * probe).sum().backward()
    # fp32 rounding only: absolute tolerance 1e-6 of each tensor's largest entry (outputs and grads are O(1-10)).
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    torch.testing.assert_close(fast_x_grad, x.grad, rtol=1e-5, atol=1e-6 * x.grad.abs().max().item())
    for name, p in moe.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-5, atol=1e-6 * p.grad.abs().max().item(), msg=name)
    assert fast_grads["router"].abs().sum() > 0  # gate weights carry gradient to the router


def test_bucketed_group_sizes_by_hand():
    counts = torch.tensor([0, 1, 8, 9, 63, 64, 100, 130, 384, 385, 600, 5000])
    # step = 2^floor(log2(c/8)) clamped to [8, 64]: 8 up to c = 127, then 16, 32, and 64 from c = 512.
    expected = [0, 8, 8, 16, 64, 64, 104, 144, 384, 416, 640, 5056]
    assert bucketed_group_sizes(counts).tolist() == expected


def test_expert_layout_places_every_slot_once():
    experts = torch.tensor([[2, 0], [2, 1], [0, 2]])  # slots 0..5 -> experts 2, 0, 2, 1, 0, 2
    slots, sizes = expert_layout(experts, 4, bucket=False)
    assert slots.tolist() == [1, 4, 3, 0, 2, 5] and sizes.tolist() == [2, 1, 3, 0]
    slots, sizes = expert_layout(experts, 4, bucket=True)  # groups padded to 8 rows with the sentinel 6
    assert sizes.tolist() == [8, 8, 8, 0]
    assert slots.tolist() == [1, 4] + [6] * 6 + [3] + [6] * 7 + [0, 2, 5] + [6] * 5


def test_bias_changes_selection_but_not_gate_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    plain = route(logits, torch.zeros(4), top_k=2, scale=1.0)
    biased = route(logits, torch.tensor([0.0, -5.0, 0.0, 5.0]), top_k=2, scale=1.0)
    assert plain.experts.tolist() == [[0, 1]] and biased.experts.tolist() == [[3, 0]]
    s = torch.sigmoid(logits[0])
    assert biased.weights[0].tolist() == pytest.approx([float(s[3] / (s[3] + s[0])), float(s[0] / (s[3] + s[0]))])
    assert route(logits, torch.zeros(4), 2, 2.5).weights.sum().item() == pytest.approx(2.5)


def test_routed_scaling_factor_reproduces_moonlight():
    # Moonlight App. C: 64 experts, top-6 -> 2.446. One expert: the factor is exactly 1.
    assert routed_scaling_factor(64, 6) == pytest.approx(2.446, abs=0.003)
    assert routed_scaling_factor(16, 1) == 1.0
    # All E experts with equal weights would give sqrt(E); sigmoid spread keeps it a little below.
    assert 0.9 * math.sqrt(8) < routed_scaling_factor(8, 8) < math.sqrt(8)
    with pytest.raises(ValueError, match="1 <= top_k <= n_experts"):
        routed_scaling_factor(4, 5)


def test_balance_bias_update_by_hand():
    b = torch.zeros(4)
    # loads 10, 0, 5, 5: mean 5, violations -1, 1, 0, 0; signs sum to 0.
    assert balance_bias_update(b, torch.tensor([10, 0, 5, 5]), 0.1).tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    # loads 1, 1, 1, 9: signs 1, 1, 1, -1 with mean 0.5 -> steps 0.5, 0.5, 0.5, -1.5 (times u).
    assert balance_bias_update(b, torch.tensor([1, 1, 1, 9]), 0.1).tolist() == pytest.approx([0.05, 0.05, 0.05, -0.15])
    assert balance_bias_update(b + 1, torch.zeros(4, dtype=torch.long), 0.1).tolist() == [1.0] * 4  # no tokens: no step


def test_sequence_balance_loss_by_hand():
    # Two experts, top-1, one sequence of two tokens: both pick expert 0.
    scores = torch.tensor([[0.6, 0.2], [0.9, 0.3]])
    experts = torch.tensor([[0], [0]])
    p = torch.tensor([[0.75, 0.25], [0.75, 0.25]]).mean(0)  # scores normalised per token, averaged
    f = torch.tensor([2 / (1 * 2) * 2, 0.0])  # E / (k T) * count
    assert sequence_balance_loss(scores, experts, 1, 2).item() == pytest.approx(float((f * p).sum()))
    uniform = torch.full((4, 4), 0.5)
    assert sequence_balance_loss(uniform, torch.tensor([[0], [1], [2], [3]]), 1, 4).item() == pytest.approx(1.0)


def test_aux_loss_only_in_training_and_only_when_on():
    x = torch.randn(2, 4, D)
    assert make_moe()(x) is not None and make_moe().aux_loss is None  # coefficient 0: off
    moe = make_moe(moe_aux_loss_coef=0.01)
    moe(x)
    assert moe.aux_loss is not None and moe.aux_loss.requires_grad and 0 < moe.aux_loss.item() < 0.01 * E / K
    moe.eval()
    moe(x)
    assert moe.aux_loss is None


def test_aux_loss_free_bias_balances_a_skewed_router(single_thread):
    """A router that sends every token to the same K experts: the bias alone must spread the load."""
    torch.manual_seed(0)
    moe = MoE(moe_config(n_routed_experts=16, top_k=2, moe_bias_update_rate=0.01))
    direction = F.normalize(torch.randn(D), dim=0)
    with torch.no_grad():
        moe.router.normal_(0.0, 0.05)
        moe.router[:2] += 3.0 * direction  # experts 0 and 1 win for every input near +direction
    gen = torch.Generator().manual_seed(3)

    def batch():
        return 2.0 * direction + 0.3 * torch.randn(4, 32, D, generator=gen)

    with torch.no_grad():
        moe(batch())
        moe.update_balance_bias()
        skewed = moe.telemetry()["load_max_over_mean"]
        for _ in range(400):
            moe(batch())
            moe.update_balance_bias()
        moe.telemetry()
        for _ in range(20):
            moe(batch())
            moe.update_balance_bias()
        balanced = moe.telemetry()
    assert skewed == pytest.approx(8.0)  # all load on 2 of 16 experts: max/mean = 16/2
    assert balanced["load_max_over_mean"] < 1.5
    assert balanced["bias_abs_mean"] > 0.1


def test_telemetry_accumulates_over_training_forwards_and_resets():
    moe = make_moe()
    x = torch.randn(3, 4, D)
    moe(x)
    moe(x)
    moe.eval()
    moe(x)  # evaluation forwards count for neither the bias nor the telemetry
    assert int(moe.step_load.sum()) == 2 * 12 * K
    stats = moe.telemetry()
    assert set(stats) == {"load_max_over_mean", "router_entropy", "bias_abs_mean"}
    assert 1.0 <= stats["load_max_over_mean"] <= E / K and 0 < stats["router_entropy"] <= 1
    assert set(moe.telemetry()) == {"bias_abs_mean"}  # reset: nothing routed since
    moe.update_balance_bias()
    assert int(moe.step_load.sum()) == 0


def test_state_dict_holds_the_bias_not_the_counters():
    keys = set(make_moe().state_dict())
    assert "balance_bias" in keys and not any("load" in k or "seen" in k for k in keys)
    assert "balance_bias" not in dict(make_moe().named_parameters())


def test_bf16_autocast_close_to_fp32():
    moe = make_moe()
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        ref = moe(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = moe(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 2e-2


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown MoE dispatch backend 'loop'; valid: auto, grouped_mm, padded_bmm"):
        moe_experts(torch.randn(2, D), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1),
                    torch.randn(E, F_E, D), torch.randn(E, F_E, D), torch.randn(E, D, F_E), backend="loop")
