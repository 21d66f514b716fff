import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from muonlab.rundir import MetricsLogger, read_metrics


def test_rows_are_plain_json_and_flushed(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(1, {"tokens": np.int64(512), "loss": torch.tensor(3.5), "lr": np.float32(0.25), "phase": "train"})
    # Flushed: readable before close.
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 1, "tokens": 512, "loss": 3.5, "lr": 0.25, "phase": "train"
    }  # fmt: skip
    logger.log(2, {"loss": float("nan"), "grad_norm": torch.tensor(float("inf")), "x": -math.inf})
    logger.close()

    second = (tmp_path / "metrics.jsonl").read_text().splitlines()[1]
    assert json.loads(second) == {"step": 2, "loss": "nan", "grad_norm": "inf", "x": "-inf"}  # standard JSON
    rows = read_metrics(tmp_path)
    assert math.isnan(rows[1]["loss"]) and rows[1]["grad_norm"] == math.inf and rows[1]["x"] == -math.inf
    assert isinstance(rows[0]["tokens"], int)


def test_bad_values_are_rejected(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(TypeError, match="metric 'loss' must be a scalar"):
            logger.log(1, {"loss": torch.ones(3)})
        with pytest.raises(TypeError, match="metric 'cfg' must be a number, bool, string or None, got dict"):
            logger.log(1, {"cfg": {}})
        with pytest.raises(ValueError, match="pass the step as the first argument"):
            logger.log(1, {"step": 1})


def test_resume_truncates_rows_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": 10.0 - step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 3')  # a crash mid-line

    with MetricsLogger(tmp_path, resume_step=3) as logger:
        logger.log(4, {"loss": 0.5})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == 0.5


def test_read_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics log at"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_tensorboard_is_silently_off_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        assert not logger.tensorboard_enabled
        logger.log(1, {"loss": 1.0})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_tensorboard_gets_finite_numeric_scalars(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step):
            calls.append(("init", log_dir, purge_step))

        def add_scalar(self, key, value, step):
            calls.append((key, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with MetricsLogger(tmp_path, resume_step=7, tensorboard=True) as logger:
        assert logger.tensorboard_enabled
        logger.log(8, {"loss": 2.0, "diverged": float("nan"), "phase": "train", "ok": True})
    assert calls == [("init", str(tmp_path / "tensorboard"), 8), ("loss", 2.0, 8), ("close",)]
