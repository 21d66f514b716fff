"""Bad input raises the documented error, naming the problem; a refused step changes nothing."""

import pytest
import torch
from torch import nn

from muonlab.optim import CoefficientSet, Muon, NonFiniteGradientError

pytestmark = pytest.mark.faults  # the optimizer's cases of the fault-injection suite (issue 21)


def randn(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# ---- construction ------------------------------------------------------------------------------


def muon_params():
    return [nn.Parameter(torch.zeros(4, 6))]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(scale="adam"), r"unknown scale rule 'adam'.*moonlight"),
        (dict(ns_coefficients="chebyshev"), r"unknown ns_coefficients 'chebyshev'.*polar_express"),
        (dict(ns_method="qr"), r"unknown ns_method 'qr'.*gram"),
        (dict(ns_dtype="int8"), r"unknown ns_dtype 'int8'.*bfloat16"),
        (dict(nonfinite="ignore"), r"unknown nonfinite policy 'ignore'.*skip"),
        (dict(ns_steps=0), r"ns_steps must be a positive integer, got 0"),
        (dict(momentum=1.0), r"momentum must be a finite number in \[0, 1\), got 1.0"),
        (dict(lr=-1.0), r"lr must be a finite number in \[0, inf\), got -1.0"),
        (dict(lr=float("inf")), r"lr must be a finite number in \[0, inf\), got inf"),
        (dict(lr=float("nan")), r"lr must be a finite number in \[0, inf\), got nan"),
        (dict(lr=torch.tensor(0.01)), r"lr must be a finite number .*a tensor learning rate is not supported"),
        (dict(weight_decay=-0.1), r"weight_decay must be a finite number in \[0, inf\), got -0.1"),
        (dict(weight_decay=float("inf")), r"weight_decay must be a finite number in \[0, inf\), got inf"),
        (dict(momentum=float("nan")), r"momentum must be a finite number in \[0, 1\), got nan"),
        (dict(nesterov="yes"), r"nesterov must be True or False, got 'yes'"),
        (dict(eps=0.0), r"eps must be a finite number in \(0, inf\), got 0.0"),
    ],
)
def test_bad_muon_options_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Muon(muon_params(), algorithm="muon", **kwargs)


def test_bad_option_in_one_group_is_named_with_the_group():
    with pytest.raises(ValueError, match=r"parameter group 1: unknown scale rule 'huge'"):
        Muon([{"params": muon_params()}, {"params": muon_params(), "scale": "huge"}], algorithm="muon")


def test_bad_adamw_betas_are_named():
    with pytest.raises(ValueError, match=r"AdamW beta2 must be a finite number in \[0, 1\), got 1.0"):
        Muon([nn.Parameter(torch.zeros(3))], algorithm="adamw", adamw_betas=(0.9, 1.0))


def test_unsafe_dtype_for_a_coefficient_set_is_refused():
    # Both built-in sets are measured safe in every dtype; a set that declares fewer is enforced.
    fragile = CoefficientSet("fragile", ((3.0, -3.0, 1.0),), safe_dtypes=(torch.float32,))
    with pytest.raises(ValueError, match=r"'fragile' is not numerically safe in torch.bfloat16"):
        Muon(muon_params(), algorithm="muon", ns_coefficients=fragile)
    Muon(muon_params(), algorithm="muon", ns_coefficients=fragile, ns_dtype=torch.float32)
    Muon(muon_params(), algorithm="muon", ns_coefficients=fragile, ns_method="svd")


def test_group_without_algorithm_is_refused():
    with pytest.raises(
        ValueError, match=r"parameter group 0 has algorithm None; valid: \['muon', 'adamw'\].*param_groups"
    ):
        Muon(muon_params())
    with pytest.raises(ValueError, match=r"parameter group 1 has algorithm 'sgd'"):
        Muon([{"params": muon_params(), "algorithm": "muon"}, {"params": muon_params(), "algorithm": "sgd"}])


def test_vector_in_a_muon_group_is_refused_by_name():
    bias = nn.Parameter(torch.zeros(8))
    with pytest.raises(ValueError, match=r"parameter 'blk.bias' of shape \(8,\) is in a Muon group.*adamw"):
        Muon([{"params": [nn.Parameter(torch.zeros(8, 8)), bias], "names": ["blk.weight", "blk.bias"],
               "algorithm": "muon"}])
    with pytest.raises(ValueError, match=r"of shape \(\) is in a Muon group"):
        Muon([nn.Parameter(torch.tensor(1.0))], algorithm="muon")


def test_parameter_in_two_groups_is_refused():
    p = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="appears in two parameter groups"):
        Muon([{"params": [p], "algorithm": "muon"}, {"params": [p], "algorithm": "adamw"}])


def test_names_must_match_params():
    with pytest.raises(ValueError, match="has 1 names for 2 params"):
        Muon([{"params": muon_params() + [nn.Parameter(torch.zeros(2, 2))], "names": ["a"], "algorithm": "muon"}])


def test_complex_parameter_in_a_muon_group_is_refused():
    with pytest.raises(ValueError, match="complex"):
        Muon([nn.Parameter(torch.zeros(4, 4, dtype=torch.complex64))], algorithm="muon")


# ---- refused steps leave weights and state untouched --------------------------------------------


def setup(nonfinite="raise"):
    """A Muon group (2-D + 3-D) and an AdamW group, after two valid steps (so state exists)."""
    params = {
        "w": nn.Parameter(randn(12, 20, seed=0)),
        "experts": nn.Parameter(randn(2, 8, 12, seed=1)),
        "gain": nn.Parameter(randn(12, seed=2)),
        "emb": nn.Parameter(randn(10, 12, seed=3)),
    }
    opt = Muon([
        {"params": [params["w"], params["experts"]], "names": ["w", "experts"], "algorithm": "muon"},
        {"params": [params["gain"], params["emb"]], "names": ["gain", "emb"], "algorithm": "adamw"},
    ], lr=0.05, weight_decay=0.1, nonfinite=nonfinite)
    for t in range(2):
        set_grads(params, seed=10 * t)
        opt.step()
    return params, opt


def set_grads(params, seed):
    for i, p in enumerate(params.values()):
        p.grad = randn(*p.shape, seed=seed + i)


def snapshot(params, opt):
    weights = {k: p.detach().clone() for k, p in params.items()}
    state = {k: {s: v.clone() for s, v in opt.state[p].items()} for k, p in params.items()}
    return weights, state


def assert_unchanged(params, opt, snap):
    weights, state = snap
    for k, p in params.items():
        assert torch.equal(p.detach(), weights[k]), f"weight {k} changed"
        assert opt.state[p].keys() == state[k].keys()
        for s, v in state[k].items():
            assert torch.equal(opt.state[p][s], v), f"state {k}.{s} changed"


@pytest.mark.parametrize("bad", ["w", "experts", "gain", "emb"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_gradient_raises_and_changes_nothing(bad, value):
    params, opt = setup("raise")
    set_grads(params, seed=99)
    params[bad].grad.view(-1)[3] = value
    snap = snapshot(params, opt)
    with pytest.raises(NonFiniteGradientError, match=rf"gradient of parameter '{bad}' contains NaN or inf"):
        opt.step()
    assert_unchanged(params, opt, snap)
    assert opt.skipped_steps == 0
    # The optimizer is still usable afterwards.
    set_grads(params, seed=98)
    opt.step()
    assert not torch.equal(params["w"].detach(), snap[0]["w"])


def test_nonfinite_error_is_a_floating_point_error():
    assert issubclass(NonFiniteGradientError, FloatingPointError)


def test_nonfinite_skip_changes_nothing_and_counts():
    params, opt = setup("skip")
    for k, bad in enumerate(["emb", "w"]):
        set_grads(params, seed=50 + k)
        params[bad].grad[0] = float("nan")
        snap = snapshot(params, opt)
        assert opt.step() is None
        assert_unchanged(params, opt, snap)
        assert opt.skipped_steps == k + 1
    set_grads(params, seed=60)
    opt.step()
    assert opt.skipped_steps == 2


def test_nonfinite_skip_on_the_very_first_step_creates_no_state():
    p = nn.Parameter(randn(6, 6, seed=0))
    opt = Muon([p], algorithm="muon", nonfinite="skip")
    p.grad = torch.full((6, 6), float("nan"))
    opt.step()
    assert opt.skipped_steps == 1 and p not in opt.state


def test_sparse_gradient_is_refused_and_changes_nothing():
    params, opt = setup()
    set_grads(params, seed=70)
    params["emb"].grad = params["emb"].grad.to_sparse()
    snap = snapshot(params, opt)
    with pytest.raises(RuntimeError, match="'emb' has a sparse gradient"):
        opt.step()
    assert_unchanged(params, opt, snap)


def test_complex_gradient_is_refused_and_changes_nothing():
    params, opt = setup()
    c = nn.Parameter(torch.zeros(5, dtype=torch.complex64))
    opt.add_param_group({"params": [c], "names": ["phase"], "algorithm": "adamw"})
    set_grads(params, seed=80)
    c.grad = torch.ones(5, dtype=torch.complex64)
    snap = snapshot(params, opt)
    with pytest.raises(RuntimeError, match="'phase' has a complex gradient"):
        opt.step()
    assert_unchanged(params, opt, snap)
    assert torch.equal(c.detach(), torch.zeros(5, dtype=torch.complex64))


def test_a_refused_group_leaves_the_optimizer_as_it_was():
    optimizer = Muon(muon_params(), algorithm="muon")
    groups = len(optimizer.param_groups)
    with pytest.raises(ValueError, match="parameter group 1: lr must be a finite number"):
        optimizer.add_param_group({"params": muon_params(), "lr": float("inf")})
    assert len(optimizer.param_groups) == groups


def test_an_empty_matrix_is_skipped():
    empty, full = nn.Parameter(torch.zeros(0, 4)), nn.Parameter(torch.ones(4, 4))
    optimizer = Muon([empty, full], algorithm="muon", lr=0.1)
    empty.grad, full.grad = torch.zeros(0, 4), torch.randn(4, 4)
    optimizer.step()
    assert not torch.equal(full.detach(), torch.ones(4, 4)) and empty.shape == (0, 4)


def test_another_optimizers_state_dict_is_refused_and_changes_nothing():
    params = muon_params()
    optimizer = Muon(params, algorithm="muon", lr=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    adamw = torch.optim.AdamW(params, lr=0.1)
    adamw.step()
    with pytest.raises(ValueError, match="parameter group 0 holds .* of algorithm None in the state dict"):
        optimizer.load_state_dict(adamw.state_dict())
    saved = optimizer.state_dict()
    saved["state"][0]["exp_avg"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"has state \['exp_avg'\] in the state dict.*another optimizer"):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert all(torch.equal(v, optimizer.state[params[0]][k]) for k, v in before.items())
    optimizer.step()  # still works


def test_an_embedding_put_into_muon_by_hand_warns_once_naming_it():
    from muonlab.optim import param_groups

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8, bias=False))
    param_groups(model)  # routes model.0.weight as an embedding
    with pytest.warns(UserWarning, match="parameter '0.weight' is routed as 'embedding'"):
        Muon([{"params": list(model.parameters()), "algorithm": "muon"}], lr=0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Muon([{"params": list(model.parameters()), "algorithm": "muon"}], lr=0.1)  # once per parameter


# ---- the non-finite policy covers the update: finite gradients too large to update with ---------


HUGE = [("w", 1e19, 0.0), ("experts", 1e19, 0.0), ("gain", 3e19, 0.0), ("emb", 3e19, 0.0),
        ("w", 3e19, 1.0), ("emb", 3e19, 1.0)]


@pytest.mark.parametrize("bad, value, clip", HUGE, ids=[f"{b}-{v:g}-clip{c:g}" for b, v, c in HUGE])
def test_a_huge_finite_gradient_raises_naming_it_and_changes_nothing(bad, value, clip):
    """Muon's limit is S·(1 − 0.95) ≈ 9.2e17 and AdamW's S ≈ 1.84e19 (S = sqrt(bf16's largest)); one entry of
    ``value`` puts the gradient past it. Clipping cannot rescue an entry of 3e19: the float32 norm it would
    divide by overflows."""
    params, opt = setup("raise")
    opt.max_grad_norm = clip
    set_grads(params, seed=99)
    params[bad].grad.view(-1)[3] = value
    snap = snapshot(params, opt)
    with pytest.raises(NonFiniteGradientError, match=rf"gradient of parameter '{bad}' is finite but too large to "
                                                     r"update with: its norm \(.*\) is at or past "):
        opt.step()
    assert_unchanged(params, opt, snap)
    set_grads(params, seed=98)
    opt.step()  # still usable
    assert all(bool(torch.isfinite(p).all()) for p in params.values())


def test_a_huge_finite_gradient_is_skipped_and_counted():
    params, opt = setup("skip")
    set_grads(params, seed=99)
    params["w"].grad.fill_(1e19)
    snap = snapshot(params, opt)
    opt.step()
    assert_unchanged(params, opt, snap)
    assert opt.skipped_steps == 1


def test_clipping_rescues_a_huge_gradient_whose_norm_it_can_measure():
    params, opt = setup("raise")
    opt.max_grad_norm = 1.0
    set_grads(params, seed=99)
    params["w"].grad.view(-1)[3] = 1e19  # norm 1e19: past Muon's limit, but clipped to 1 before the update
    snap = snapshot(params, opt)
    opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    assert not torch.equal(params["w"].detach(), snap[0]["w"])


def _accumulate(scale: float, steps: int, limits_off: bool = False) -> torch.Tensor:
    """A Muon matrix after ``steps`` steps of the same gradient direction at norm ``scale`` (momentum 0.95)."""
    import math

    from muonlab.optim.engines import base

    with pytest.MonkeyPatch.context() as mp:
        if limits_off:
            mp.setattr(base, "update_limit", lambda algorithm, momentum: math.inf)
        p = nn.Parameter(randn(16, 32, seed=0))
        opt = Muon([p], algorithm="muon", lr=0.01)
        direction = randn(16, 32, seed=1)
        direction /= direction.norm()
        for _ in range(steps):
            p.grad = direction * scale
            opt.step()
    return p.detach()


def test_momentum_built_from_gradients_under_the_limit_keeps_the_update_finite():
    """Gradients at 95 % of Muon's limit S·(1 − μ), 100 steps in one direction: the momentum grows to ~0.95·S
    and the weights stay finite. Negative control: without the limits, gradients at 0.2·S (under AdamW's
    limit, past Muon's) pass the check and the momentum's growth turns the weights to NaN/inf."""
    from muonlab.optim.gradients import SQUARE_LIMIT

    assert bool(torch.isfinite(_accumulate(0.95 * SQUARE_LIMIT * 0.05, 100)).all())
    assert not bool(torch.isfinite(_accumulate(0.2 * SQUARE_LIMIT, 100, limits_off=True)).all())
    with pytest.raises(NonFiniteGradientError, match="too large to update with"):
        _accumulate(0.2 * SQUARE_LIMIT, 1)


@pytest.mark.parametrize("field, value, pattern", [
    ("lr", torch.tensor(0.01), r"parameter group 0: lr must be a finite number .*a tensor learning rate"),
    ("lr", float("inf"), r"parameter group 0: lr must be a finite number in \[0, inf\), got inf"),
    ("weight_decay", float("nan"), r"parameter group 0: weight_decay must be a finite number"),
    ("momentum", 1.5, r"parameter group 0: momentum must be a finite number in \[0, 1\), got 1.5"),
    ("betas", (0.9, float("nan")), r"parameter group 1: AdamW beta2 must be a finite number"),
])
def test_a_bad_number_set_between_steps_stops_the_next_step_before_anything_changes(field, value, pattern):
    """A scheduler or a hand edit changes a group after construction: the step checks every group first, so
    no parameter is left half-updated (a tensor lr used to fail after the Muon matrices were updated)."""
    params, opt = setup("raise")
    set_grads(params, seed=99)
    opt.param_groups[1 if field == "betas" else 0][field] = value
    snap = snapshot(params, opt)
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert_unchanged(params, opt, snap)
