import pytest
import torch

from muonlab.train.schedules import constant, make_lr_lambda, warmup_cosine, warmup_stable_decay


def test_warmup_cosine_shape():
    kw = dict(warmup_steps=10, total_steps=110, final_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)  # (0 + 1) / 10: small but not zero
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)  # holds after the end
    values = [warmup_cosine(t, **kw) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_stable_decay_shape():
    kw = dict(warmup_steps=10, total_steps=100, decay_fraction=0.2, final_ratio=0.0)
    assert warmup_stable_decay(4, **kw) == pytest.approx(0.5)
    assert warmup_stable_decay(10, **kw) == 1.0
    assert warmup_stable_decay(79, **kw) == 1.0
    assert warmup_stable_decay(80, **kw) == 1.0  # decay starts at T - D = 80
    assert warmup_stable_decay(90, **kw) == pytest.approx(0.5)
    assert warmup_stable_decay(100, **kw) == pytest.approx(0.0)
    assert warmup_stable_decay(95, **{**kw, "final_ratio": 0.1}) == pytest.approx(1 - 0.9 * 0.75)
    assert warmup_stable_decay(1000, **{**kw, "decay_fraction": 0.0}) == 1.0


def test_constant():
    assert constant(0) == 1.0
    assert constant(1, warmup_steps=4) == pytest.approx(0.5)
    assert constant(10, warmup_steps=4) == 1.0


def test_make_lr_lambda_drives_lambdalr():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, make_lr_lambda("warmup_cosine", warmup_steps=2, total_steps=4, final_ratio=0.0)
    )
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 1.0, 0.0])


def test_make_lr_lambda_errors():
    with pytest.raises(ValueError, match=r"unknown lr schedule 'cosine'.*constant, warmup_cosine, warmup_stable_decay"):
        make_lr_lambda("cosine")
    with pytest.raises(ValueError, match=r"bad arguments for lr schedule 'warmup_cosine'.*warmup_steps, total_steps"):
        make_lr_lambda("warmup_cosine", warmup=10, total_steps=100)
    with pytest.raises(ValueError, match=r"final_ratio must be in \[0, 1\], got 2"):
        make_lr_lambda("warmup_cosine", warmup_steps=1, total_steps=10, final_ratio=2)
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must not exceed total_steps \(10\)"):
        make_lr_lambda("warmup_stable_decay", warmup_steps=20, total_steps=10)
