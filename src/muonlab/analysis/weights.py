"""A run's weights from its checkpoint, and their RMS by matrix type (Moonlight Table 1, Table 8).

Moonlight reports the RMS ``sqrt(mean(W²))`` of the query projection and of the MLP matrices after
training with each update-scale setting: the weights grow with the update RMS (Table 8) and with
the scale a matrix's shape gets (Table 1). ``matrix_type`` names a matrix by its parameter name
without the layer: ``layers.3.attn.wq.weight`` → ``attn.wq``, ``layers.0.mlp.w_in.weight`` →
``mlp.w_in``, ``embed.weight`` → ``embed``; ``weight_rms_by_type`` averages each type over layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from muonlab.analysis.runs import Run

if TYPE_CHECKING:
    from torch import nn

__all__ = ["checkpoint_model", "matrix_type", "weight_rms", "weight_rms_by_type"]


def checkpoint_model(run: Run, checkpoint: Path | None = None) -> tuple[int, nn.Module]:
    """``(step, model)``: the run's model (from ``model_config`` in its config.json) with the weights of
    ``checkpoint`` (default: the run's latest complete checkpoint), on the CPU."""
    import torch

    from muonlab.models import ModelConfig, Transformer
    from muonlab.rundir.checkpoint import latest_checkpoint, load_checkpoint

    if "model_config" not in run.config:
        raise ValueError(f"{run.path}/config.json has no model_config, so its checkpoint cannot be rebuilt into "
                         "a model")
    checkpoint = checkpoint or latest_checkpoint(run.path)
    if checkpoint is None:
        raise ValueError(f"{run.path} holds no complete checkpoint to read weights from")
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(run.config["model_config"]))
    model.to_empty(device="cpu")
    state = load_checkpoint(checkpoint, model, optimizer=None, restore_rng=False)
    return int(state["step"]), model


def matrix_type(name: str) -> str:
    """A parameter's name without ``layers.<i>.`` and the trailing ``.weight``."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
        parts = parts[2:]
    if parts[-1] == "weight":
        parts = parts[:-1]
    return ".".join(parts)


def weight_rms(model: nn.Module) -> dict[str, float]:
    """``sqrt(mean(W²))`` of every parameter with at least 2 dimensions (norm gains and biases left out)."""
    return {name: float(p.detach().double().pow(2).mean().sqrt()) for name, p in model.named_parameters()
            if p.ndim >= 2}


def weight_rms_by_type(per_matrix: dict[str, float]) -> dict[str, float]:
    """The mean of ``weight_rms`` over the matrices of each ``matrix_type``, types in first-seen order."""
    by_type: dict[str, list[float]] = {}
    for name, rms in per_matrix.items():
        by_type.setdefault(matrix_type(name), []).append(rms)
    return {kind: sum(values) / len(values) for kind, values in by_type.items()}
