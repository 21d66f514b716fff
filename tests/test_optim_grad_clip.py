"""``Muon(max_grad_norm=...)``: clipping inside the step equals torch's clip_grad_norm_ before it."""

import pytest
import torch

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups


def _initial():
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=64, max_seq_len=16))


def _run(clip_inside: bool, max_norm: float = 0.05):
    model = _initial()
    opt = Muon(param_groups(model), lr=1e-2, ns_dtype=torch.float32, max_grad_norm=max_norm if clip_inside else 0.0)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 64, (2, 17), generator=g)
        model(x[:, :-1], x[:, 1:]).backward()
        if not clip_inside:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        opt.zero_grad()
    return model


def _update_differences(a: torch.nn.Module, b: torch.nn.Module) -> list[float]:
    """Each parameter's ``‖Δa − Δb‖ / ‖Δb‖`` over the run (Δ: the total update from the initial weights)."""
    with torch.no_grad():
        return [float((pa - pb).norm() / (pb - p0).norm()) for pa, pb, p0 in
                zip(a.parameters(), b.parameters(), _initial().parameters())]


def test_clipping_in_the_step_equals_clip_grad_norm_before_it():
    # The two sum the per-tensor norms in different orders (optimizer groups vs module order), so
    # the clip coefficient may differ in its last bit. That 1e-7 relative perturbation is what
    # floating-point reduction order allows, the same 1e-5 bound as multi-process equality.
    inside, outside = _run(True), _run(False)
    for (name, a), b in zip(inside.named_parameters(), outside.parameters()):
        assert float((a - b).detach().norm() / b.detach().norm()) < 1e-5, name


def test_clipping_changes_the_trajectory():
    """The 0.05 norm above really clips. Muon's and Adam's updates are nearly invariant to a gradient's
    scale, so clipping moves the trajectory only through how the steps' gradients weigh against each
    other: measured here, every parameter's total update moves by 1.2-2.7 %. Required: more than 0.1 %
    for every parameter, 100x the 1e-5 the equality test above allows. Negative control: a norm of 5,
    above every gradient's, changes nothing."""
    free = _run(True, max_norm=0.0)
    assert min(_update_differences(_run(True), free)) > 1e-3
    assert max(_update_differences(_run(True, max_norm=5.0), free)) == 0.0


def test_negative_max_grad_norm_is_refused():
    expected = r"max_grad_norm \(0 disables clipping\) must be a finite number in \[0, inf\), got -1.0"
    with pytest.raises(ValueError, match=expected):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], algorithm="muon", max_grad_norm=-1.0)
