"""``Muon(max_grad_norm=...)``: clipping inside the step equals torch's clip_grad_norm_ before it."""

import pytest
import torch

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups


def _run(clip_inside: bool, max_norm: float = 0.05):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=64, max_seq_len=16))
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


def test_clipping_in_the_step_equals_clip_grad_norm_before_it():
    # The two sum the per-tensor norms in different orders (optimizer groups vs module order), so
    # the clip coefficient may differ in its last bit. That 1e-7 relative perturbation is what
    # floating-point reduction order allows, the same 1e-5 bound as multi-process equality.
    inside, outside = _run(True), _run(False)
    for (name, a), b in zip(inside.named_parameters(), outside.parameters()):
        assert float((a - b).norm() / b.norm()) < 1e-5, name


def test_clipping_changes_the_trajectory():  # the 0.05 norm above really clips
    clipped = _run(True)
    free = _run(True, max_norm=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(clipped.parameters(), free.parameters()))


def test_negative_max_grad_norm_is_refused():
    expected = r"max_grad_norm \(0 disables clipping\) must be a finite number in \[0, inf\), got -1.0"
    with pytest.raises(ValueError, match=expected):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], algorithm="muon", max_grad_norm=-1.0)
