"""The ``pareto`` study's timing runs (the study's docstring has the method)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ....analysis.runs import Run
from ....models import model_config_for
from ....train.config import TrainConfig
from ...study import PlannedRun

OPTIMIZERS = ("adamw", "muon")
BYTE_VOCAB = 257

PRESETS: dict[str, dict[str, Any]] = {
    # The batch-size cpu preset's model (4 layers, heads of 32, 128-token sequences) at d = 64, 128 (its width) and
    # 256; per-device batch 4 sequences (512 tokens), so its 256–8,192-token batches run on 1–16 devices; a 1 GB/s
    # link (≈ 10 Gb Ethernet between CPU nodes). 24 timing runs of 20 steps, one after another (times_steps: no
    # run's step time is measured beside another): 2 min 3 s on a 2-core AMD EPYC (the dry-run said 1 min 47 s).
    "cpu": dict(
        batch_size_runs="runs/batch-size", widths=(64, 128, 256), timing_batches=(2, 4, 16, 64), n_layers=4,
        head_dim=32, seq_len=128, timing_steps=20, device_batch=4, link_gb_per_s=1.0, compile=False, device="auto",
    ),
    # The batch-size gpu preset's model (4 layers, heads of 64, 256-token sequences) at d = 128, 256, 512; per-device
    # batch 16 sequences (4,096 tokens): its 2,048–65,536-token batches on 1–16 GPUs; a 50 GB/s link.
    "gpu": dict(
        batch_size_runs="runs/batch-size-gpu", widths=(128, 256, 512), timing_batches=(8, 16, 64, 256), n_layers=4,
        head_dim=64, seq_len=256, timing_steps=30, device_batch=16, link_gb_per_s=50.0, compile=False, device="cuda",
    ),
}


def timing_name(optimizer: str, width: int, batch: int) -> str:
    return f"time-{optimizer}-d{width}-b{batch}"


def model_for(p: Mapping[str, Any], width: int):
    """The ``ModelConfig`` timed at ``width`` (byte vocabulary, as the batch-size study trains)."""
    return model_config_for("demo", BYTE_VOCAB, p["seq_len"], d_model=width, n_layers=p["n_layers"],
                            n_heads=width // p["head_dim"])


def _config(p: Mapping[str, Any], optimizer: str, width: int, batch: int) -> TrainConfig:
    steps = p["timing_steps"]
    return TrainConfig(
        corpus="english", tokenizer="byte", model="demo", d_model=width, n_layers=p["n_layers"],
        n_heads=width // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=steps * batch * p["seq_len"], optimizer=optimizer, lr=1e-3, warmup_steps=1, log_every=1,
        telemetry_every=0, eval_every=steps, eval_batches=1, checkpoint_every=0, compile=p["compile"],
        device=p["device"], seed=0,
    )


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """One timing run per optimizer, width and batch (no stages)."""
    bad = [w for w in p["widths"] if w % p["head_dim"]]
    if bad:
        raise ValueError(f"widths {bad} are not multiples of head_dim={p['head_dim']}")
    if p["timing_steps"] <= 3:
        raise ValueError(f"timing_steps={p['timing_steps']} must exceed the 3 warm-up steps left out of the median")
    return [PlannedRun(timing_name(o, w, b), _config(p, o, w, b))
            for w in p["widths"] for b in p["timing_batches"] for o in OPTIMIZERS]
