"""A plain (one-process) checkpoint loaded by a multi-process run: every rank keeps its part.

A run trained on one process saves the plain format (``model.safetensors`` + ``optimizer.pt``),
whose tensors are whole. Continued on M processes (``torchrun ... train`` on the same run folder),
each rank reads the whole files and copies its part of every tensor into the model and the
optimizer, whatever the parallel mode: a replicated tensor (DDP, ZeRO-1's parameters) whole, a
DTensor (FSDP2, a device mesh) through :func:`torch.distributed.tensor.distribute_tensor` with
``src_data_rank=None`` — every rank slices its own shard, nothing is sent. The optimizer state goes
through :meth:`muonlab.optim.Muon.load_checkpoint_state`, the same path as a sharded checkpoint,
keyed ``"<parameter name>/<field>"`` from the names the plain state dict carries.

The other direction needs nothing here: a sharded checkpoint loads at any world size, one included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ...parallel import unwrap
from .store import MODEL_FILE, OPTIMIZER_FILE, CheckpointError, CorruptCheckpointError, first_nonfinite

__all__ = ["load_plain_on_group", "plain_optimizer_state"]


def _fill(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's part of the whole tensor ``full`` into ``target`` (a tensor or a DTensor)."""
    if hasattr(target, "device_mesh"):  # a DTensor: slice the local shard, no communication
        from torch.distributed.tensor import distribute_tensor

        part = distribute_tensor(full.to(device=target.device, dtype=target.dtype), target.device_mesh,
                                 target.placements, src_data_rank=None)
        target._local_tensor.copy_(part._local_tensor)
    else:
        target.copy_(full)


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """For each name, the names of the tensors sharing its storage (tied weights are saved once)."""
    by_storage: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        local = tensor._local_tensor if hasattr(tensor, "_local_tensor") else tensor
        by_storage.setdefault((local.untyped_storage().data_ptr(), local.storage_offset()), []).append(name)
    return {name: names for names in by_storage.values() for name in names}


def plain_optimizer_state(saved: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A plain ``Muon.state_dict()`` as sharded checkpoints keep it: the group metadata
    (``Muon.checkpoint_metadata`` form) and the state tensors keyed ``"<parameter name>/<field>"``."""
    groups, tensors = [], {}
    for group in saved["param_groups"]:
        if "names" not in group:
            raise CheckpointError(f"optimizer state {path / OPTIMIZER_FILE} does not name its parameters, so it "
                                  "cannot be split across processes; resume it on one process")
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "size": len(group["params"])})
        for index, name in zip(group["params"], group["names"]):
            for field, value in saved["state"].get(index, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}/{field}"] = value
    return {"param_groups": groups, "skipped_steps": saved.get("skipped_steps", 0)}, tensors


def load_plain_on_group(path: Path, model: torch.nn.Module, optimizer) -> None:
    """Load the plain checkpoint at ``path`` into a model and optimizer spread over a process group."""
    try:
        weights = safetensors.torch.load_file(str(path / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error type for a truncated or garbled file
        raise CorruptCheckpointError(f"checkpoint weights {path / MODEL_FILE} are corrupt or truncated: {e}") from None
    module = unwrap(model)
    targets = module.state_dict()
    aliases = _aliases(targets)
    with torch.no_grad():
        for name, target in targets.items():
            source = next((weights[a] for a in aliases[name] if a in weights), None)
            if source is None or tuple(source.shape) != tuple(target.shape):
                raise CheckpointError(f"checkpoint weights {path / MODEL_FILE} do not fit the model: "
                                      f"{name} is {'missing' if source is None else tuple(source.shape)} there, "
                                      f"{tuple(target.shape)} here")
            _fill(target, source)
    bad = first_nonfinite(model)
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint weights {path / MODEL_FILE} hold NaN/inf ({bad})")
    if optimizer is None:
        return
    try:
        saved = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, or an object weights_only refuses to unpickle
        raise CorruptCheckpointError(f"checkpoint file {path / OPTIMIZER_FILE} is corrupt or unsafe: {e}") from None
    metadata, tensors = plain_optimizer_state(saved, path)
    try:
        optimizer.load_checkpoint_metadata(metadata)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state {path / OPTIMIZER_FILE} does not fit this optimizer's param "
                              f"groups: {e}") from None

    def read(template: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, target in template.items():
                _fill(target, tensors[key])

    optimizer.load_checkpoint_state(set(tensors), read)
