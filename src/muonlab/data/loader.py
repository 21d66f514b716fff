"""Batches of (input, target) token windows for training and evaluation.

The token stream is cut into non-overlapping windows: window ``w`` is the ``seq_len + 1`` tokens
starting at ``w * seq_len``, giving the input ``x = window[:-1]`` and the target ``y = window[1:]``
(next-token prediction). Windows cross document boundaries; the end-of-text tokens in the stream
mark them.

Training (:class:`TokenLoader`) visits the windows of each epoch in a random order that depends
only on ``(seed, epoch)``. A *global* batch is ``batch_size * world_size`` consecutive windows of
that order, and rank ``r`` takes the ``r``-th slice of ``batch_size``: so N ranks together see
exactly the batches one process with ``batch_size * N`` would see, and single-device training is
simply ``world_size=1``. Windows left over at the end of an epoch (fewer than a global batch) are
skipped. The position is two integers, saved by :meth:`TokenLoader.state_dict`; every rank holds
the same state, so one copy is enough for a checkpoint.

Evaluation (:func:`val_batches`) walks the validation windows in order from the start: the same
batches every time it is called.

Both take an optional ``labels`` array beside the tokens (same length): the targets then come from
it, ``y = labels[window][1:]``, so a label of ``IGNORE_INDEX`` leaves that target out of the loss
(fine-tuning on responses only, :mod:`muonlab.data.sft`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .errors import DataError


class TokenLoader:
    """Deterministic, resumable, rank-aware batches from a 1-D token array (e.g. a memmap).

    ``next_batch()`` returns ``(x, y)``, both ``int64`` tensors of shape ``[batch_size, seq_len]``
    on the CPU, with ``y`` being ``x`` shifted by one token (taken from ``labels`` when given).
    ``batch_size`` is per rank.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        labels: np.ndarray | None = None,
    ):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if value < 1:
                raise DataError(f"TokenLoader {name}={value} must be a positive integer")
        if not 0 <= rank < world_size:
            raise DataError(f"TokenLoader rank={rank} must be in 0..{world_size - 1} for world_size={world_size}")
        if tokens.ndim != 1:
            raise DataError(f"TokenLoader needs a 1-D token array, got shape {tuple(tokens.shape)}")
        _check_labels(tokens, labels)
        self.tokens = tokens
        self.labels = labels
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < self.global_batch:
            raise DataError(
                f"the training split has {len(tokens)} tokens, which make {self.n_windows} windows of "
                f"seq_len={seq_len}, fewer than one global batch of {self.global_batch} "
                f"(batch_size={batch_size} x world_size={world_size}); use a smaller batch_size or "
                "seq_len, or a bigger corpus"
            )
        self.batches_per_epoch = self.n_windows // self.global_batch
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)`` batch of this rank; moves to the next epoch when one is used up."""
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        start = self.batch_in_epoch * self.global_batch + self.rank * self.batch_size
        windows = self._window_order()[start : start + self.batch_size]
        self.batch_in_epoch += 1
        return _gather(self.tokens, windows, self.seq_len, self.labels)

    def _window_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            self._order_epoch = self.epoch
        return self._order

    def state_dict(self) -> dict[str, int]:
        """The position (and the settings it is valid for) as plain JSON-serializable ints."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "n_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`; the data and batch settings must be the same.

        The world size may differ as long as ``batch_size * world_size`` is unchanged.
        """
        for key in ("seed", "seq_len", "global_batch", "n_tokens"):
            if state.get(key) != self.state_dict()[key]:
                raise DataError(
                    f"loader state was saved with {key}={state.get(key)} but this loader has "
                    f"{key}={self.state_dict()[key]}; resume with the same data, seed, seq_len and "
                    "batch_size * world_size"
                )
        epoch, batch = state.get("epoch"), state.get("batch_in_epoch")
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(batch, int)
                and 0 <= batch <= self.batches_per_epoch):
            raise DataError(
                f"loader state has epoch={epoch}, batch_in_epoch={batch}; valid values are an epoch "
                f">= 0 and a batch in 0..{self.batches_per_epoch}"
            )
        self.epoch = epoch
        self.batch_in_epoch = batch


def val_batches(
    val_tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None,
    labels: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches: windows in order from the start of ``val_tokens``.

    Yields up to ``max_batches`` (all, if ``None``) full batches of ``batch_size`` windows; when
    the split has fewer windows than one batch, yields a single smaller batch of all of them.
    Targets come from ``labels`` when given (see the module docstring).
    """
    _check_labels(val_tokens, labels)
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"val_batches batch_size={batch_size} and seq_len={seq_len} must be positive")
    n_windows = (len(val_tokens) - 1) // seq_len
    if n_windows == 0:
        raise DataError(
            f"the validation split has {len(val_tokens)} tokens, too few for one window of "
            f"seq_len={seq_len} (+1 target); lower seq_len or raise val_fraction"
        )
    n_batches = max(1, n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        windows = np.arange(b * batch_size, min((b + 1) * batch_size, n_windows))
        yield _gather(val_tokens, windows, seq_len, labels)


def _check_labels(tokens: np.ndarray, labels: np.ndarray | None) -> None:
    if labels is not None and labels.shape != tokens.shape:
        raise DataError(f"labels of shape {tuple(labels.shape)} must have the shape of the tokens, "
                        f"{tuple(tokens.shape)}: one label per token")


def _gather(tokens: np.ndarray, windows: np.ndarray, seq_len: int,
            labels: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    # [B, seq_len + 1] indices into the stream; fancy indexing a memmap reads only these tokens.
    index = windows[:, None] * seq_len + np.arange(seq_len + 1)
    chunk = torch.from_numpy(tokens[index].astype(np.int64))
    if labels is None:
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    targets = torch.from_numpy(labels[index[:, 1:]].astype(np.int64))
    return chunk[:, :-1].contiguous(), targets
