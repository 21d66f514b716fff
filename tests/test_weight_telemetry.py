"""Weight RMS per parameter type and block-output RMS (``muonlab.train.weight_telemetry``).

References are computed here in float64 from the tensors themselves: the weights listed by hand by
block, and the block outputs caught by the test's own forward hooks (the recording under test is
not a hook), never through the module under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from muonlab.models import Transformer, preset
from muonlab.train.weight_telemetry import (
    output_trackers,
    parameter_type,
    take_output_rms,
    track_output_rms,
    weight_rms,
)


def _dense(tie: bool = False) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=97, max_seq_len=16, n_layers=3, tie_embeddings=tie))


def _moe() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("moe-tiny", vocab_size=97, max_seq_len=16))


def _rms(tensors) -> float:
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    return math.sqrt(float((flat * flat).sum()) / flat.numel())


@pytest.mark.parametrize("name, kind", [
    ("layers.0.attn.wq.weight", "layers.*.attn.wq.weight"),
    ("layers.12.mlp_norm.weight", "layers.*.mlp_norm.weight"),
    ("layers.3.mlp.shared.w_up.weight", "layers.*.mlp.shared.w_up.weight"),
    ("layers.1.mlp.w_gate", "layers.*.mlp.w_gate"),
    ("embed.weight", "embed.weight"),
    ("norm.weight", "norm.weight"),
    ("model.layers.2.attn.wo.weight", "model.layers.*.attn.wo.weight"),
    ("sublayers.2.x", "sublayers.2.x"),
])
def test_parameter_type_replaces_the_block_index(name, kind):
    assert parameter_type(name) == kind


@pytest.mark.parametrize("tie", [False, True])
def test_weight_rms_is_the_rms_over_every_block_of_each_type(tie):
    model = _dense(tie)
    with torch.no_grad():  # make the types' RMS differ from their init values
        for i, block in enumerate(model.layers):
            block.attn.wq.weight.mul_(1 + i)
            block.attn_norm.weight.fill_(0.5 + i)
    got = weight_rms(model)
    blocks = list(model.layers)
    expected = {
        "weight_rms/embed.weight": _rms([model.embed.weight]),
        "weight_rms/norm.weight": _rms([model.norm.weight]),
        **{f"weight_rms/layers.*.{part}.weight": _rms([b.get_submodule(part).weight for b in blocks])
           for part in ("attn_norm", "attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp_norm", "mlp.w_gate",
                        "mlp.w_up", "mlp.w_down")},
    }
    if not tie:
        expected["weight_rms/lm_head.weight"] = _rms([model.lm_head.weight])
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["weight_rms/layers.*.attn_norm.weight"] == pytest.approx(math.sqrt((0.25 + 2.25 + 6.25) / 3))


def test_weight_rms_of_an_moe_model_keeps_expert_stacks_and_dense_blocks_apart():
    model = _moe()
    got = weight_rms(model)
    moe_blocks = [b for b in model.layers if hasattr(b.mlp, "router")]
    assert moe_blocks and len(moe_blocks) < len(model.layers)
    assert got["weight_rms/layers.*.mlp.w_gate"] == pytest.approx(_rms([b.mlp.w_gate for b in moe_blocks]), rel=1e-12)
    dense = [b for b in model.layers if not hasattr(b.mlp, "router")]
    assert got["weight_rms/layers.*.mlp.w_gate.weight"] == pytest.approx(
        _rms([b.mlp.w_gate.weight for b in dense]), rel=1e-12)
    assert got["weight_rms/layers.*.attn.wkv_down.weight"] == pytest.approx(
        _rms([b.attn.wkv_down.weight for b in model.layers]), rel=1e-12)


def _reference_outputs(model: Transformer, batches) -> list[float]:
    """Each block's output RMS over ``batches``, caught by the test's own forward hooks, in float64."""
    caught: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.layers))}
    handles = [block.register_forward_hook(lambda m, args, out, i=i: caught[i].append(out.detach()))
               for i, block in enumerate(model.layers)]
    try:
        with torch.no_grad():
            for x, y in batches:
                model(x, y)
    finally:
        for handle in handles:
            handle.remove()
    return [_rms(outputs) for outputs in caught.values()]


def _batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 97, (2, 16), generator=gen), torch.randint(0, 97, (2, 16), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("build", [_dense, _moe], ids=["dense", "moe-mla"])
@pytest.mark.parametrize("micro_batches", [1, 3])
def test_output_rms_equals_the_rms_of_each_blocks_output_over_the_steps_micro_batches(build, micro_batches):
    model = build()
    batches = _batches(micro_batches)
    expected = _reference_outputs(model, batches)
    track_output_rms(model)
    for x, y in batches:
        model(x, y).backward()
    got = take_output_rms(model)
    assert set(got) == {f"output_rms/layer{i}" for i in range(len(model.layers))} | {"output_rms/max"}
    for i, value in enumerate(expected):
        assert got[f"output_rms/layer{i}"] == pytest.approx(value, rel=1e-6), i
    assert got["output_rms/max"] == max(got[f"output_rms/layer{i}"] for i in range(len(model.layers)))
    assert len(set(expected)) == len(expected)  # the layers differ, so a mixed-up index would fail


def test_output_rms_keeps_nothing_unless_armed_and_never_registers_a_hook():
    model = _dense()
    (x, y), = _batches(1)
    model(x, y).backward()  # not armed: nothing recorded
    assert all(t.output_sumsq is None and t.output_count == 0 for t in output_trackers(model))
    assert take_output_rms(model) == {}
    track_output_rms(model)
    model.eval()
    with torch.no_grad():
        model(x, y)  # evaluation forwards are never recorded
    assert all(t.output_sumsq is None for t in output_trackers(model))
    model.train()
    model(x, y)
    assert all(t.output_sumsq is not None and t.output_count == x.numel() * 64 for t in output_trackers(model))
    assert take_output_rms(model)
    assert all(not t.track_output_rms and t.output_sumsq is None and t.output_count == 0
               for t in output_trackers(model))  # disarmed and reset after reading
    model(x, y)
    assert all(t.output_sumsq is None for t in output_trackers(model))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_output_rms_is_recorded_by_a_compiled_model_armed_after_compilation():
    """Hooks added after torch.compile are not seen by the compiled graph; the blocks' flag is."""
    model = _dense()
    compiled = torch.compile(model, backend="eager")
    (x, y), = _batches(1)
    expected = _reference_outputs(model, [(x, y)])
    compiled(x, y)  # compiled without recording
    assert all(t.output_sumsq is None for t in output_trackers(model))
    track_output_rms(model)
    compiled(x, y)
    got = take_output_rms(model)
    assert [got[f"output_rms/layer{i}"] for i in range(3)] == pytest.approx(expected, rel=1e-6)
    compiled(x, y)
    assert all(t.output_sumsq is None for t in output_trackers(model))
