"""Optimizer telemetry that adds up across pieces and ranks.

An update's RMS is accumulated as a sum of squares and an element count, so a parameter whose
update is spread over several pieces (expert units, ZeRO-1 ranges, FSDP2 row shards, several
ranks) gets exactly ``sqrt(Σ sumsq / Σ count)`` after merging. Newton–Schulz quality is sampled
on whole matrices where they exist (on their owner rank).

Keys of :meth:`UpdateTelemetry.result` (see ``Muon.measure_next_step``): ``update_rms/muon`` and
``update_rms/adamw`` (mean over parameters of each parameter's update RMS), ``update_rms/<name>``
for named parameters, ``ns_orthogonality_residual`` (mean over samples) and
``update_spectral_norm/max`` (max over samples). With the refinements: ``update_rms_block/min`` and
``/max`` (over every orthogonalized block measured; per named parameter ``update_rms_block/<name>/min``,
``/max``), ``normuon/row_norm_cv/before`` and ``/after`` (the coefficient of variation, std/mean, of the
row norms of the orthogonalized update before and after NorMuon, mean over sampled blocks), and
``cautious/decayed_fraction/muon`` and ``/adamw`` (the fraction of coordinates decayed).
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch

__all__ = ["UpdateTelemetry", "orthogonality_sample"]


class UpdateTelemetry:
    """Per-parameter sums of squares of lr-free updates, plus Newton–Schulz samples."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, Hashable], list] = {}  # (algorithm, param id) -> [name, sumsq, count]
        self.residuals: list[float] = []
        self.spectral: list[float] = []
        self.blocks: dict[str | None, list[float]] = {}  # parameter name -> [min, max] block update RMS
        self.spread: dict[str, list[float]] = {}  # "before" / "after" NorMuon -> row-norm CVs
        self.decayed: dict[str, list[int]] = {}  # algorithm -> [coordinates decayed, coordinates]

    def add(
        self, algorithm: str, param_id: Hashable, name: str | None, update: torch.Tensor, scale: float = 1.0
    ) -> None:
        """Record ``scale · update`` (a whole parameter's update or one piece of it)."""
        entry = self.sums.setdefault((algorithm, param_id), [name, 0.0, 0])
        entry[1] += scale * scale * float(update.double().pow(2).sum())
        entry[2] += update.numel()

    def add_blocks(self, name: str | None, blocks: torch.Tensor, scale: float = 1.0) -> None:
        """Record the update RMS of each block of a batch ``[N, r, c]`` (times ``scale``)."""
        rms = (blocks.double().pow(2).mean(dim=(-2, -1)).sqrt() * scale).tolist()
        entry = self.blocks.setdefault(name, [math.inf, 0.0])
        entry[0], entry[1] = min(entry[0], *rms), max(entry[1], *rms)

    def add_row_spread(self, when: str, blocks: torch.Tensor) -> None:
        """Record the coefficient of variation of the row norms of the first block of ``blocks``."""
        norms = blocks[0].double().norm(dim=-1)
        self.spread.setdefault(when, []).append(float(norms.std(correction=0) / norms.mean().clamp_min(1e-30)))

    def add_decayed(self, algorithm: str, mask: torch.Tensor) -> None:
        """Record a cautious-decay mask: how many of its coordinates were decayed."""
        entry = self.decayed.setdefault(algorithm, [0, 0])
        entry[0] += int(mask.sum())
        entry[1] += mask.numel()

    def add_sample(self, matrix: torch.Tensor, scale: float) -> None:
        """Record one unscaled Newton–Schulz output ``[rows, cols]`` and its update scale."""
        residual, spectral = orthogonality_sample(matrix)
        self.residuals.append(residual)
        self.spectral.append(scale * spectral)

    def merge(self, other: UpdateTelemetry) -> None:
        for key, (name, sumsq, count) in other.sums.items():
            entry = self.sums.setdefault(key, [name, 0.0, 0])
            entry[1] += sumsq
            entry[2] += count
        self.residuals += other.residuals
        self.spectral += other.spectral
        for name, (low, high) in other.blocks.items():
            entry = self.blocks.setdefault(name, [math.inf, 0.0])
            entry[0], entry[1] = min(entry[0], low), max(entry[1], high)
        for when, values in other.spread.items():
            self.spread.setdefault(when, []).extend(values)
        for algorithm, (hit, total) in other.decayed.items():
            entry = self.decayed.setdefault(algorithm, [0, 0])
            entry[0] += hit
            entry[1] += total

    def gather(self, group) -> None:
        """Merge every rank's records into this one (all ranks end with the same totals)."""
        import torch.distributed as dist

        everyone: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, self, group=group)
        self.__init__()
        for other in everyone:
            self.merge(other)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        per_algorithm: dict[str, list[float]] = {}
        for (algorithm, _), (name, sumsq, count) in self.sums.items():
            rms = math.sqrt(sumsq / count) if count else 0.0
            per_algorithm.setdefault(algorithm, []).append(rms)
            if name is not None:
                out[f"update_rms/{name}"] = rms
        for algorithm, values in per_algorithm.items():
            out[f"update_rms/{algorithm}"] = sum(values) / len(values)
        if self.residuals:
            out["ns_orthogonality_residual"] = sum(self.residuals) / len(self.residuals)
            out["update_spectral_norm/max"] = max(self.spectral)
        for name, (low, high) in self.blocks.items():
            if name is not None:
                out[f"update_rms_block/{name}/min"], out[f"update_rms_block/{name}/max"] = low, high
        if self.blocks:
            out["update_rms_block/min"] = min(low for low, _ in self.blocks.values())
            out["update_rms_block/max"] = max(high for _, high in self.blocks.values())
        for when, values in self.spread.items():
            out[f"normuon/row_norm_cv/{when}"] = sum(values) / len(values)
        for algorithm, (hit, total) in self.decayed.items():
            out[f"cautious/decayed_fraction/{algorithm}"] = hit / total if total else 0.0
        return out


def orthogonality_sample(O: torch.Tensor) -> tuple[float, float]:
    """``(‖ÕÕᵀ − I‖_F / sqrt(m), ‖Õ‖₂)`` of one matrix, on its small side ``m``, in float64."""
    sample = O.double()
    if sample.shape[0] > sample.shape[1]:
        sample = sample.T
    eye = torch.eye(sample.shape[0], dtype=sample.dtype, device=sample.device)
    residual = torch.linalg.matrix_norm(sample @ sample.T - eye) / math.sqrt(sample.shape[0])
    return float(residual), float(torch.linalg.matrix_norm(sample, ord=2))
