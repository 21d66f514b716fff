"""Matrix layouts: a matrix stored [in, out] (transposed), expert stacks, and fused projections split into blocks.

Each fast-path update is compared with the same matrices held as ordinary separate parameters (an
nn.Linear-style [out, in] weight, one 2-D parameter per expert, one parameter per block), and the
transposed case also with the float64 reference step on the logical matrix.
"""

import pytest
import torch
from torch import nn

from muonlab.optim import Muon, param_groups, route_parameters
from muonlab.optim.reference import reference_muon_step

RULES = ("moonlight", "keller", "spectral", "none")


class StoredInOut(nn.Module):
    """A Linear whose weight is stored [in, out], declared like a custom module would."""

    muon_layouts = {"weight": {"transposed": True}}
    muon_roles = {"weight": "hidden"}

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))


class Fused(nn.Module):
    """A weight whose output rows are ``fused`` equal projections (transposed or not)."""

    def __init__(self, n_in: int, n_out: int, fused: int, transposed: bool):
        super().__init__()
        self.muon_roles = {"weight": "hidden"}
        self.muon_layouts = {"weight": {"transposed": transposed, "fused": fused}}
        self.weight = nn.Parameter(torch.randn(*((n_in, n_out) if transposed else (n_out, n_in))))


class Stack(nn.Module):
    """An expert stack [E, out, in], or [E, in, out] with ``transposed``, optionally a fused [gate|up]."""

    def __init__(self, E: int, n_out: int, n_in: int, transposed: bool, fused: int = 1):
        super().__init__()
        self.muon_roles = {"w": "expert"}
        self.muon_layouts = {"w": {"transposed": transposed, "fused": fused}}
        self.w = nn.Parameter(torch.randn(E, *((n_in, n_out) if transposed else (n_out, n_in))))


def _steps(model: nn.Module, grads: list[dict[str, torch.Tensor]], **kwargs) -> dict[str, torch.Tensor]:
    """Run Muon on ``model`` with the given gradients (one dict name -> grad per step); return the weights."""
    opt = Muon(param_groups(model, split_fused=kwargs.pop("split_fused", False)), lr=0.05, weight_decay=0.1,
               **kwargs)
    params = dict(model.named_parameters())
    for step in grads:
        for name, g in step.items():
            params[name].grad = g.clone()
        opt.step()
    return {name: p.detach().clone() for name, p in params.items()}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (10, 10)])
@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float32"])
def test_transposed_update_equals_linear_holding_the_transpose(rule, shape, ns_dtype):
    n_out, n_in = shape
    torch.manual_seed(0)
    stored = nn.Sequential(StoredInOut(n_in, n_out))
    linear = nn.Sequential(nn.Linear(n_in, n_out, bias=False))
    linear[0].weight.data.copy_(stored[0].weight.data.T)
    grads = [torch.randn(n_out, n_in) for _ in range(3)]  # of the logical [out, in] matrix
    a = _steps(stored, [{"0.weight": g.T.contiguous()} for g in grads], scale=rule, ns_dtype=ns_dtype)
    b = _steps(linear, [{"0.weight": g} for g in grads], scale=rule, ns_dtype=ns_dtype)
    assert torch.equal(a["0.weight"].T, b["0.weight"])


@pytest.mark.parametrize("rule", ["keller", "spectral"])
def test_transposed_update_matches_the_float64_reference_on_the_logical_matrix(rule):
    torch.manual_seed(1)
    n_out, n_in = 16, 6  # tall: keller and spectral scale by sqrt(16 / 6), not by its inverse
    module = StoredInOut(n_in, n_out)
    w0 = module.weight.detach().clone()
    g = torch.randn(n_out, n_in)
    out = _steps(nn.Sequential(module), [{"0.weight": g.T.contiguous()}], scale=rule, ns_dtype="float64")
    expected, _ = reference_muon_step(w0.T, g, torch.zeros(n_out, n_in), lr=0.05, weight_decay=0.1, scale=rule)
    torch.testing.assert_close(out["0.weight"].T.double(), expected, rtol=0, atol=1e-6)  # fp32 weights


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rule", ["moonlight", "keller"])
def test_expert_stack_equals_one_2d_muon_per_expert(transposed, rule):
    torch.manual_seed(2)
    E, n_out, n_in = 3, 6, 10
    stack = nn.Sequential(Stack(E, n_out, n_in, transposed))
    separate = nn.Sequential(*(nn.Linear(n_in, n_out, bias=False) for _ in range(E)))
    for e in range(E):
        w = stack[0].w.data[e]
        separate[e].weight.data.copy_(w.T if transposed else w)
    grads = [torch.randn(E, n_out, n_in) for _ in range(2)]  # per expert, logical [out, in]
    a = _steps(stack, [{"0.w": g.mT.contiguous() if transposed else g} for g in grads], scale=rule)
    b = _steps(separate, [{f"{e}.weight": g[e] for e in range(E)} for g in grads], scale=rule)
    for e in range(E):
        got = a["0.w"][e].T if transposed else a["0.w"][e]
        assert torch.equal(got, b[f"{e}.weight"]), e


def _blocks_module(n_in: int, n_block: int, fused: int) -> nn.Module:
    m = nn.Module()
    for i in range(fused):
        setattr(m, f"b{i}", nn.Linear(n_in, n_block, bias=False))
    return m


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rule", RULES)
def test_split_fused_equals_the_blocks_as_separate_parameters(transposed, rule):
    torch.manual_seed(3)
    n_in, n_block, fused = 12, 5, 3
    whole = nn.Sequential(Fused(n_in, fused * n_block, fused, transposed))
    blocks = nn.Sequential(_blocks_module(n_in, n_block, fused))
    logical = whole[0].weight.data.T if transposed else whole[0].weight.data
    for i in range(fused):
        getattr(blocks[0], f"b{i}").weight.data.copy_(logical[i * n_block : (i + 1) * n_block])
    grads = [torch.randn(fused * n_block, n_in) for _ in range(2)]
    a = _steps(whole, [{"0.weight": g.T.contiguous() if transposed else g} for g in grads], scale=rule,
               split_fused=True)
    b = _steps(blocks, [{f"0.b{i}.weight": g[i * n_block : (i + 1) * n_block] for i in range(fused)}
                        for g in grads], scale=rule)
    got = a["0.weight"].T if transposed else a["0.weight"]
    for i in range(fused):
        assert torch.equal(got[i * n_block : (i + 1) * n_block], b[f"0.b{i}.weight"]), i


def test_split_fused_is_off_by_default_and_changes_the_update():
    torch.manual_seed(4)
    model = nn.Sequential(Fused(8, 12, 3, transposed=True))
    g = [{"0.weight": torch.randn(8, 12)}]
    whole = _steps(model, g, scale="keller")
    model_again = nn.Sequential(Fused(8, 12, 3, transposed=True))
    model_again.load_state_dict(model.state_dict())
    assert [grp.get("blocks", 1) for grp in param_groups(model_again)] == [1]
    assert not torch.equal(whole["0.weight"], _steps(model_again, g, scale="keller", split_fused=True)["0.weight"])


def test_fused_expert_stack_split_equals_separate_gate_and_up_stacks():
    torch.manual_seed(5)
    E, f, d = 2, 4, 6
    fused = nn.Sequential(Stack(E, 2 * f, d, transposed=False, fused=2))
    gate, up = Stack(E, f, d, transposed=False), Stack(E, f, d, transposed=False)
    gate.w.data.copy_(fused[0].w.data[:, :f])
    up.w.data.copy_(fused[0].w.data[:, f:])
    g = torch.randn(E, 2 * f, d)
    a = _steps(fused, [{"0.w": g}], scale="spectral", split_fused=True)
    b = _steps(nn.Sequential(gate, up), [{"0.w": g[:, :f], "1.w": g[:, f:]}], scale="spectral")
    assert torch.equal(a["0.w"][:, :f], b["0.w"]) and torch.equal(a["0.w"][:, f:], b["1.w"])


def test_layout_errors_name_the_parameter_and_what_is_valid():
    with pytest.raises(ValueError, match=r"'0.weight' of shape \(8, 10\) cannot be laid out as declared: blocks=3"):
        param_groups(nn.Sequential(Fused(8, 10, 3, transposed=True)), split_fused=True)
    bad = StoredInOut(4, 4)
    bad.muon_layouts = {"weight": {"transpose": True}}
    with pytest.raises(ValueError, match=r"muon_layouts\['weight'\] has unknown keys \['transpose'\]"):
        route_parameters(bad)
    with pytest.raises(ValueError, match=r"parameter group 0, parameter #0 of shape \(4, 6\): blocks=3"):
        Muon([{"params": [nn.Parameter(torch.randn(4, 6))], "algorithm": "muon", "blocks": 3}])
    with pytest.raises(ValueError, match="transposed must be True or False"):
        Muon([{"params": [nn.Parameter(torch.randn(4, 6))], "algorithm": "muon", "transposed": "yes"}])
