"""Muon on the MoE model's 3-D expert stacks equals Muon on each expert as its own 2-D matrix."""

import pytest
import torch
from torch import nn

from muonlab.models import ModelConfig, Transformer
from muonlab.optim import Muon, param_groups

HYPER = dict(lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.float32)


@pytest.mark.parametrize("scale", ["moonlight", "spectral"])
def test_expert_stacks_match_per_expert_muon(scale, single_thread):
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, attention="mla", n_routed_experts=6,
                      n_shared_experts=1, top_k=2, expert_ffn_hidden=20, max_seq_len=16)
    torch.manual_seed(0)
    model = Transformer(cfg)
    groups = param_groups(model)
    expert_group = next(g for g in groups if g["role"] == "expert")
    stacks = dict(zip(expert_group["names"], expert_group["params"]))
    assert set(stacks) == {"layers.1.mlp.w_gate", "layers.1.mlp.w_up", "layers.1.mlp.w_down"}
    # The reference: every expert of every stack as a separate 2-D parameter in a plain "hidden" group.
    separate = {name: [nn.Parameter(p[e].detach().clone()) for e in range(p.shape[0])] for name, p in stacks.items()}
    reference = Muon([{"params": [q for qs in separate.values() for q in qs], "algorithm": "muon", "role": "hidden"}],
                     scale=scale, **HYPER)
    optimizer = Muon(groups, scale=scale, **HYPER)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randint(0, 40, (2, 12), generator=gen)
        model(x, x).backward()
        for name, p in stacks.items():
            p.grad.add_(torch.randn(p.shape, generator=gen))  # every expert gets a full-rank gradient
            for e, q in enumerate(separate[name]):
                q.grad = p.grad[e].clone()
        optimizer.step()
        reference.step()
        optimizer.zero_grad()
        reference.zero_grad()
    for name, p in stacks.items():
        for e, q in enumerate(separate[name]):
            torch.testing.assert_close(p[e], q, rtol=1e-5, atol=1e-7, msg=f"{name} expert {e}")
        assert not torch.equal(p[0], p[0].new_zeros(p[0].shape))
