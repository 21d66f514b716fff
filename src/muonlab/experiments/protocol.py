"""The protocol every study report states, and the helpers that compute it from run folders.

- **Seeds.** ``TrainConfig.seed`` sets the initialisation (``torch.manual_seed`` before the model is
  built) *and* the data order (``TokenLoader`` shuffles each epoch with ``(seed, epoch)``), so one
  seed number changes both; runs that differ only in the optimizer and share a seed start from the
  same weights and see the same batches in the same order (``paired_by_seed`` checks that the
  configs allow nothing else). A claimed difference needs ``analysis.paired.MIN_SEEDS`` seeds.
- **Verdicts.** paired over seeds (``muonlab.analysis.paired``): the mean of the per-seed differences
  with its 95 % t interval; two arms are *separated* when the interval excludes 0 (``paired``,
  ``combined_verdict``). Each arm's mean ± sample std (``mean_std``) is shown beside it, unpaired.
- **Validation.** a fixed held-out slice: the documents the split seed 0 assigns to validation,
  and the first ``eval_batches`` batches of them, the same at every evaluation and in every run.
- **Epochs.** tokens trained / tokens in the training split (``epochs``): the built-in English
  corpus holds about 1M BPE tokens, so long runs repeat it, and the report says how often.
- **Equal-loss efficiency.** ``tokens_to_reach``: the tokens a run needs to first reach a loss, the
  small-scale counterpart of the papers' "same loss with less compute".

``claim_section`` writes the "paper claim vs small-scale result" table every report ends its
findings with: the claim with its number, what came out, whether the direction agrees, by how much.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..analysis.paired import MIN_SEEDS, PairedDifference, paired_difference
from ..analysis.runs import NOT_HYPERPARAMETERS, Run, config_key

__all__ = ["ClaimCheck", "MeanStd", "by_seed", "claim_section", "combined_verdict", "epochs", "mean_std", "paired",
           "paired_by_seed", "protocol_section", "tokens_to_reach"]

# Config keys that may differ between the two runs of a seed pair: the optimizer and where the run lives.
_PAIR_MAY_DIFFER = frozenset({"optimizer", "run_dir", "command", "resume", "progress", "threads"})


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1; None for a single value) of ``n`` values."""

    mean: float
    std: float | None
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.4f}" if self.std is not None else ""
        return f"{self.mean:.4f}{spread} ({self.n} seed{'s' if self.n != 1 else ''})"


def mean_std(values: Iterable[float]) -> MeanStd:
    """``MeanStd`` of ``values`` (at least one, all finite)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"mean_std got a non-finite value in {values}")
    return MeanStd(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def by_seed(runs: Iterable[Run], value: Callable[[Run], float | None] | None = None) -> dict[int, float]:
    """``{seed: value(run)}`` (default: the final validation loss), leaving out runs whose value is None."""
    get = value or (lambda r: r.final("val_loss"))
    out = {}
    for run in runs:
        v = get(run)
        if v is not None:
            out[int(run.config["seed"])] = float(v)
    return out


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDifference | None:
    """``b − a`` paired over the seeds both arms have (``analysis.paired.paired_difference``); None when they
    share no seed."""
    return paired_difference(a, b) if set(a) & set(b) else None


def combined_verdict(verdicts: Sequence[bool | None]) -> bool | None:
    """Several paired verdicts read as one: ``False`` when any is False (separated the wrong way), ``True`` when
    there is at least one and all are True, else ``None`` (cannot tell)."""
    if any(v is False for v in verdicts):
        return False
    return True if verdicts and all(v is True for v in verdicts) else None


def epochs(run: Run) -> float | None:
    """How many times ``run`` went through its training data: tokens trained / tokens in the training
    split (``train_split_tokens`` of its config.json); None when either is not recorded."""
    split = run.config.get("train_split_tokens")
    tokens = run.final("tokens")
    return tokens / split if split and tokens is not None else None


def tokens_to_reach(run: Run, loss: float, key: str = "val_loss") -> float | None:
    """Tokens at which ``run``'s ``key`` first reaches ``loss``, linearly interpolated between the two logged
    points around the crossing (the first logged point's tokens if it is already there); None if it never does."""
    tokens, values = run.xy("tokens", key)
    for i, value in enumerate(values):
        if value <= loss:
            if i == 0:
                return float(tokens[0])
            t0, t1, v0, v1 = tokens[i - 1], tokens[i], values[i - 1], values[i]
            return float(t0 + (v0 - loss) * (t1 - t0) / (v0 - v1))
    return None


def paired_by_seed(runs: Sequence[Run], a: str = "adamw", b: str = "muon") -> list[tuple[int, Run, Run]]:
    """``(seed, run of optimizer a, run of optimizer b)`` for every seed, sorted by seed.

    Raises ``ValueError`` when a seed lacks one of the two, or when a pair's configs differ in more
    than the optimizer (then the pair would not share initialisation and data order).
    """
    by_seed: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_seed.setdefault(int(run.config["seed"]), {})[run.optimizer] = run
    pairs = []
    ignore = NOT_HYPERPARAMETERS | _PAIR_MAY_DIFFER
    for seed in sorted(by_seed):
        arms = by_seed[seed]
        if a not in arms or b not in arms:
            raise ValueError(f"seed {seed} has runs of {sorted(arms)}; a pair needs one {a} and one {b} run")
        if config_key(arms[a], ignore) != config_key(arms[b], ignore):
            differing = sorted(k for k in set(arms[a].config) | set(arms[b].config)
                               if k not in ignore and arms[a].config.get(k) != arms[b].config.get(k))
            raise ValueError(f"seed {seed}: runs {arms[a].name} and {arms[b].name} differ in {differing}, "
                             "not only in the optimizer")
        pairs.append((seed, arms[a], arms[b]))
    return pairs


def protocol_section(runs: Sequence[Run]) -> str:
    """The protocol paragraph of a report: seeds, pairing, validation slice and epochs, from the run folders."""
    seeds = sorted({int(r.config["seed"]) for r in runs})
    seen = [e for e in (epochs(r) for r in runs) if e is not None]
    first = runs[0].config
    val_tokens = first.get("eval_batches", 0) * first.get("batch_size", 0) * first.get("seq_len", 0)
    epoch_text = (f"{min(seen):.2f}–{max(seen):.2f}" if seen and max(seen) - min(seen) > 0.005
                  else f"{seen[0]:.2f}" if seen else "unknown")
    split = first.get("train_split_tokens")
    lines = [
        f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)}; a claimed difference needs ≥ {MIN_SEEDS}). "
        "The seed sets the initialisation and the data order; within a seed the optimizers start from the "
        "same weights and see the same batches in the same order.",
        "- Verdicts: paired over seeds: the mean of the per-seed differences with its 95 % t interval; two arms "
        f"are separated when the interval excludes 0 (≥ {MIN_SEEDS} seeds). Each arm's mean ± sample std over "
        "seeds is shown beside it (unpaired).",
        f"- Validation: a fixed held-out slice ({val_tokens:,} tokens: {first.get('eval_batches')} batches of "
        f"the documents held out with split seed 0), the same at every evaluation and in every run.",
        f"- Data: {first.get('corpus')} corpus, {first.get('tokenizer')} tokens"
        + (f", {split:,} training tokens" if split else "") + f"; each run saw its training data {epoch_text} times.",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ClaimCheck:
    """One paper claim against its small-scale result.

    ``paper``: the claim with its number and source; ``result``: what the runs gave; ``agrees``:
    whether the direction agrees (None: cannot tell, e.g. too few seeds); ``by_how_much``: the size
    of the effect here, next to the paper's.
    """

    paper: str
    result: str
    agrees: bool | None
    by_how_much: str


def claim_section(checks: Sequence[ClaimCheck]) -> str:
    """The markdown table "paper claim | small-scale result | direction agrees? | by how much"."""
    verdict = {True: "yes", False: "**no**", None: "cannot tell"}
    lines = ["| paper claim | small-scale result | direction agrees? | by how much |", "|---|---|---|---|"]
    for c in checks:
        cells = (c.paper, c.result, verdict[c.agrees], c.by_how_much)
        lines.append("| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
    return "\n".join(lines)
