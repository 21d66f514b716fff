"""The few collectives distributed Muon uses, written once for every backend and torch ≥ 2.9.

Every call goes through the ``torch.distributed`` module attribute at call time (never a name
imported early), so a benchmark that wraps ``torch.distributed.<collective>`` counts Muon's
traffic exactly as it counts DDP's and FSDP2's.

- ``reduce_scatter_sum``: ``out[r] = Σ_ranks inp[r·C : (r+1)·C]`` (``reduce_scatter_single`` where
  torch has it, else ``reduce_scatter_tensor``).
- ``all_gather_flat``: ``out = cat_ranks(inp)`` (``all_gather_single`` or ``all_gather_into_tensor``).
- ``all_to_all_uneven``: rank r sends ``send_sizes[d]`` elements to each rank d and receives
  ``recv_sizes[s]`` from each rank s (``all_to_all_single`` with split sizes), asynchronously.
- ``check_same_across_ranks``: all-gather a description and fail on every rank, naming the first
  difference, instead of letting mismatched ranks hang in a later collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_flat",
    "all_to_all_uneven",
    "check_same_across_ranks",
    "reduce_scatter_sum",
]


def reduce_scatter_sum(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    """``out`` (C elements) ← this rank's C-slice of the element-wise sum of every rank's ``inp``."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp, group=group)


def all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    """``out`` (N·C elements) ← the concatenation of every rank's ``inp`` (C elements), rank order."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def all_to_all_uneven(send: torch.Tensor, send_sizes: Sequence[int], recv_sizes: Sequence[int], group):
    """Start an all-to-all of a flat ``send`` buffer laid out by destination rank.

    Returns ``(work, recv)``: wait on ``work`` before reading ``recv`` (laid out by source rank),
    and keep ``send`` alive until then.
    """
    recv = send.new_empty(sum(recv_sizes))
    work = dist.all_to_all_single(recv, send, list(recv_sizes), list(send_sizes), group=group, async_op=True)
    return work, recv


def check_same_across_ranks(description: Sequence[tuple[str, Any]], what: str, group=None) -> None:
    """Raise ``ValueError`` on every rank if ``description`` differs between ranks.

    ``description`` is a list of ``(label, value)`` pairs (picklable, comparable with ``==``); the
    error names the first label whose value differs from rank 0's, with both values.
    """
    world = dist.get_world_size(group)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, list(description), group=group)
    reference = dict(gathered[0])
    for rank, desc in enumerate(gathered[1:], start=1):
        mine = dict(desc)
        for label in list(reference) + [k for k in mine if k not in reference]:
            if reference.get(label, "<absent>") != mine.get(label, "<absent>"):
                raise ValueError(
                    f"{what} differ across ranks: {label} is {reference.get(label, '<absent>')!r} on rank 0 "
                    f"but {mine.get(label, '<absent>')!r} on rank {rank}; every rank must build the same "
                    "model and optimizer with the same settings"
                )
