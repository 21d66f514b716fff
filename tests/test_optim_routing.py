"""Routing: param_groups / route_parameters / routing_table on the Transformer and custom modules."""

import math

import pytest
import torch
from torch import nn

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups, route_parameters, routing_table


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=64, max_seq_len=16, **kw))


def roles(model):
    return {rp.name: rp.role for rp in route_parameters(model)}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_transformer_routing(tied):
    model = tiny(tie_embeddings=tied)
    r = roles(model)
    assert r["embed.weight"] == "embedding"
    assert r["norm.weight"] == "norm"
    for i in range(model.config.n_layers):
        assert r[f"layers.{i}.attn_norm.weight"] == r[f"layers.{i}.mlp_norm.weight"] == "norm"
        for w in ("wq", "wk", "wv", "wo"):
            assert r[f"layers.{i}.attn.{w}.weight"] == "hidden"
        for w in ("w_gate", "w_up", "w_down"):
            assert r[f"layers.{i}.mlp.{w}.weight"] == "hidden"
    if tied:
        assert "lm_head.weight" not in r
    else:
        assert r["lm_head.weight"] == "head"
    groups = param_groups(model)
    algo = {n: g["algorithm"] for g in groups for n in g["names"]}
    assert {n for n, a in algo.items() if a == "muon"} == {n for n, role in r.items() if role == "hidden"}
    assert algo["embed.weight"] == algo["norm.weight"] == "adamw"
    # Every parameter exactly once, and the groups build an optimizer.
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in model.parameters()}
    Muon(groups, lr=1e-3)


def test_tied_embedding_is_one_param_with_an_alias():
    model = tiny(tie_embeddings=True)
    routed = route_parameters(model)
    emb = [rp for rp in routed if rp.param is model.embed.weight]
    assert len(emb) == 1
    assert emb[0].name == "embed.weight" and emb[0].aliases == ("lm_head.weight",)
    assert emb[0].algorithm == "adamw"
    assert "embed.weight (= lm_head.weight)" in routing_table(model)


def test_table_lists_names_shapes_roles_and_scales():
    model = tiny(tie_embeddings=False)
    table = routing_table(model)
    lines = table.splitlines()
    assert lines[0].split() == ["parameter", "shape", "role", "algorithm", "scale", "(moonlight)"]
    by_name = {line.split()[0]: line.split() for line in lines[2:-1]}
    d, f = model.config.d_model, model.config.ffn_hidden
    assert by_name["layers.0.attn.wq.weight"][1:] == [f"{d}x{d}", "hidden", "muon", f"{0.2 * math.sqrt(d):.3f}"]
    assert by_name["layers.1.mlp.w_down.weight"][1:] == [
        f"{d}x{f}",
        "hidden",
        "muon",
        f"{0.2 * math.sqrt(max(d, f)):.3f}",
    ]
    assert by_name["embed.weight"][1:] == [f"64x{d}", "embedding", "adamw", "-"]
    assert by_name["lm_head.weight"][1:] == [f"64x{d}", "head", "adamw", "-"]
    assert by_name["norm.weight"][1:] == [f"{d}", "norm", "adamw", "-"]
    n_muon = sum(p.numel() for n, p in model.named_parameters() if by_name[n][3] == "muon")
    n_adamw = sum(p.numel() for p in model.parameters()) - n_muon
    assert lines[-1] == f"muon: {n_muon:,} parameters; adamw: {n_adamw:,} parameters"
    # keller rule in the table: sqrt(max(1, A/B)) for w_gate [f, d] → sqrt(f/d).
    keller = routing_table(model, scale="keller")
    assert f"{math.sqrt(f / d):.3f}" in next(line for line in keller.splitlines() if "w_gate" in line)


def test_print_table(capsys):
    param_groups(tiny(), print_table=True)
    out = capsys.readouterr().out
    assert "layers.0.attn.wq.weight" in out and "hidden" in out and "muon" in out


# ---- custom modules -------------------------------------------------------------------------------


class Undeclared(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(4, 4))


class Experts(nn.Module):
    muon_roles = {"experts": "expert"}

    def __init__(self, E=3, A=8, B=12):
        super().__init__()
        self.experts = nn.Parameter(torch.randn(E, A, B))
        self.gate = nn.Linear(B, E, bias=True)


def test_undeclared_matrix_raises_with_muon_roles_hint():
    model = nn.Sequential(nn.Linear(4, 4), Undeclared())
    with pytest.raises(
        ValueError, match=r"cannot route parameter '1.mix' of shape \(4, 4\).*Undeclared.muon_roles = \{'mix': <role>\}"
    ):
        route_parameters(model)


def test_instance_level_muon_roles():
    m = Undeclared()
    m.muon_roles = {"mix": "router"}
    assert roles(m) == {"mix": "router"}


def test_declared_expert_stack_goes_to_muon():
    model = nn.Sequential(Experts())
    r = roles(model)
    assert r == {"0.experts": "expert", "0.gate.weight": "hidden", "0.gate.bias": "bias"}
    groups = {g["role"]: g for g in param_groups(model)}
    assert groups["expert"]["algorithm"] == "muon" and groups["bias"]["algorithm"] == "adamw"
    assert "3x8x12" in routing_table(model)
    assert f"{0.2 * math.sqrt(12):.3f}" in next(line for line in routing_table(model).splitlines() if "experts" in line)


def test_unknown_declared_role_raises():
    m = Undeclared()
    m.muon_roles = {"mix": "attention"}
    with pytest.raises(ValueError, match=r"gives 'mix' the role 'attention'; valid roles:.*hidden"):
        route_parameters(m)


def test_shared_parameter_with_conflicting_roles_raises():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8, bias=False)
            self.lm_head = nn.Linear(8, 8, bias=False)
            self.lm_head.weight = self.proj.weight  # hidden (muon) and head (adamw) at once

    with pytest.raises(ValueError, match=r"'proj.weight' is shared with 'lm_head.weight'.*both muon.*and adamw"):
        route_parameters(Model())


def test_shared_parameter_with_agreeing_roles_is_listed_once():
    shared = nn.Linear(6, 6, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    routed = route_parameters(model)
    assert [(rp.name, rp.role, rp.aliases) for rp in routed] == [("0.weight", "hidden", ("2.weight",))]


def test_role_overrides():
    groups = {g["role"]: g for g in param_groups(tiny(), role_overrides={"norm": {"weight_decay": 0.0, "lr": 1e-4}})}
    assert groups["norm"]["weight_decay"] == 0.0 and groups["norm"]["lr"] == 1e-4
    assert "weight_decay" not in groups["hidden"]
    with pytest.raises(ValueError, match=r"role_overrides names unknown roles \['normalization'\]; valid roles:"):
        param_groups(tiny(), role_overrides={"normalization": {"lr": 0.0}})


def test_biases_norms_and_scalars_go_to_adamw():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.ln = nn.LayerNorm(6)
            self.temperature = nn.Parameter(torch.tensor(1.0))
            self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)

    r = roles(Model())
    assert r == {"fc.weight": "hidden", "fc.bias": "bias", "ln.weight": "norm", "ln.bias": "bias",
                 "temperature": "scalar"}


def test_conv_and_embedding_roles():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))
    assert roles(model) == {"0.weight": "embedding", "1.weight": "hidden", "1.bias": "bias",
                            "2.weight": "norm", "2.bias": "bias"}
    line = next(line for line in routing_table(model).splitlines() if line.startswith("1.weight"))
    # Conv2d weight [8, 4, 3, 3] is the matrix (8, 36): scale 0.2·sqrt(36) = 1.2.
    assert line.split()[1:] == ["8x4x3x3", "hidden", "muon", "1.200"]


def test_head_names_can_be_changed():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 4, bias=False))
    model.add_module("readout", nn.Linear(4, 2, bias=False))
    assert roles(model)["readout.weight"] == "hidden"
    assert {rp.name: rp.role for rp in route_parameters(model, head_names=("readout",))}["readout.weight"] == "head"
    groups = param_groups(model, head_names=("readout",))
    assert {g["role"]: g["algorithm"] for g in groups} == {"hidden": "muon", "head": "adamw"}


def test_conv1d_weight_scale_uses_out_by_in_times_kernel():
    # A Conv1d weight [out, in, k] is 3-D like an expert stack, but routed as a conv ("hidden") it
    # is the one matrix (out, in·k) — DESIGN: "A conv weight is viewed as (out, -1)".
    model = nn.Sequential(nn.Conv1d(4, 8, 5, bias=False))
    line = next(line for line in routing_table(model).splitlines() if line.startswith("0.weight"))
    assert line.split()[1:] == ["8x4x5", "hidden", "muon", f"{0.2 * math.sqrt(20):.3f}"]
