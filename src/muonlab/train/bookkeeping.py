"""The training loop's bookkeeping: how far a run is, and what the current logging interval has seen."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..parallel import Runtime

__all__ = ["Interval", "Progress"]


@dataclass
class Progress:
    """How far a run is: optimizer steps taken, tokens trained on, and seconds spent in training steps
    (evaluation, checkpointing and a compiled run's first step excluded). Saved with every checkpoint."""

    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0


@dataclass
class Interval:
    """The training since the last logged row: summed micro-batch losses, timed steps' tokens and
    seconds, and the first compiled step's seconds (mostly compilation: logged once as ``compile_s``)."""

    loss_sum: torch.Tensor
    loss_count: int = 0
    tokens: int = 0
    time_s: float = 0.0
    compile_s: float | None = None

    def add_loss(self, loss: torch.Tensor) -> None:
        """Count one micro-batch's loss (no host sync: the sum stays on the device)."""
        self.loss_sum += loss.detach()
        self.loss_count += 1

    def end_step(self, tokens: int, elapsed: float, compiling: bool) -> float:
        """Count a finished step; returns the seconds it adds to ``Progress.wall_s`` (0 when ``compiling``)."""
        if compiling:
            self.compile_s = elapsed
            return 0.0
        self.tokens += tokens
        self.time_s += elapsed
        return elapsed

    def state_dict(self, runtime: Runtime) -> dict[str, float | int]:
        """The losses counted so far (summed, averaged over ranks), for a checkpoint: a resume then logs
        the same mean for the interval as a run that did not stop. Collective: every rank calls it."""
        return {"interval_loss_sum": runtime.mean(self.loss_sum), "interval_loss_count": self.loss_count}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s losses (absent from checkpoints of older versions: an empty interval)."""
        self.loss_sum.fill_(state.get("interval_loss_sum", 0.0))
        self.loss_count = state.get("interval_loss_count", 0)

    def take(self, runtime: Runtime) -> tuple[float, dict[str, float]]:
        """The mean loss of the interval's micro-batches over all ranks, and its timing keys
        (``tokens_per_s``, and ``compile_s`` once); the next interval starts empty."""
        mean_loss = runtime.mean(self.loss_sum) / self.loss_count
        timing = {"tokens_per_s": self.tokens / self.time_s} if self.time_s > 0 else {}
        if self.compile_s is not None:
            timing["compile_s"] = self.compile_s
        self.loss_sum.zero_()
        self.loss_count, self.tokens, self.time_s, self.compile_s = 0, 0, 0.0, None
        return mean_loss, timing
