"""Learning-rate transfer across width, SP against muP (PAPERS.md §5.2 E6, reduced to the learning rate).

For each width and each learning rate of a factor-2 grid, train a 4-block model (heads of 32 channels,
so the head count grows with the width) on the byte-tokenized built-in English corpus for a fixed
token budget with Muon (Moonlight scale) + AdamW, warmup then cosine to 0.1x, under both
parametrizations, and read the final validation loss. At muP's base width (``--base``, the middle
width by default) muP *is* SP (bit for bit; tests/test_mup.py), so one set of runs serves both.
The defaults (widths 32/64/128, 25 runs of 0.5M tokens) take about 22 minutes on a 2-core CPU;
``--widths 64,128,256 --base 128`` is the protocol's size, about twice as long.

Every run is an ordinary run folder (``--runs``); the runs go through ``muonlab.experiments.runner``
(``--workers`` single-threaded processes side by side) and a re-run skips finished runs. The figure
has one panel per parametrization (final validation loss against lr, one curve per width, the
optimum marked) and a third with the optimum's lr against width; the numbers go to a JSON file
beside the figure. The optimum is the minimum of a parabola in log2(lr) through the grid minimum and
its two neighbours (the grid minimum itself when it lies on the grid's edge).

    python benchmarks/mup_lr_transfer.py                 # writes docs/mup_lr_transfer.png (+ .json)
    python benchmarks/mup_lr_transfer.py --widths 64,128,256 --base 128 --out /tmp/transfer.png
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from muonlab.experiments.runner import run_configs
from muonlab.rundir import read_metrics
from muonlab.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run_config(args: argparse.Namespace, parametrization: str, width: int, lr: float) -> TrainConfig:
    """The run of one grid point; muP at the base width is the SP run (the same folder)."""
    if width == args.base:
        parametrization = "sp"
    batch, seq_len = 16, 128
    steps = args.tokens // (batch * seq_len)
    return TrainConfig(
        run_dir=str(Path(args.runs) / f"{parametrization}-d{width}-lr{lr:g}"), corpus="english", tokenizer="byte",
        model="4", d_model=width, n_heads=max(1, width // 32), seq_len=seq_len, batch_size=batch,
        train_tokens=args.tokens, lr=lr, warmup_steps=max(1, steps // 10), schedule="cosine",
        parametrization=parametrization, mup_base_width=args.base, seed=args.seed,
        eval_every=steps, log_every=max(1, steps // 10), telemetry_every=0, progress=False,
    )


def final_val_loss(config: TrainConfig) -> float:
    rows = [r for r in read_metrics(config.run_dir) if "val_loss" in r]
    return rows[-1]["val_loss"]


def optimum(lrs: list[float], losses: list[float]) -> float:
    """The lr minimising a parabola in log2(lr) through the grid minimum and its neighbours."""
    i = min(range(len(losses)), key=losses.__getitem__)
    if i in (0, len(lrs) - 1):
        return lrs[i]
    x = [math.log2(lrs[j]) for j in (i - 1, i, i + 1)]
    y = [losses[j] for j in (i - 1, i, i + 1)]
    h = x[1] - x[0]  # the grid is evenly spaced in log2(lr)
    curvature = y[0] - 2 * y[1] + y[2]
    return 2 ** (x[1] + h * (y[0] - y[2]) / (2 * curvature))


def plot(record: dict, path: Path) -> None:
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    colors = {w: c for w, c in zip(record["widths"], ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"))}
    for ax, p in zip(axes, ("sp", "mup")):
        for w in record["widths"]:
            losses = record["val_loss"][p][str(w)]
            ax.plot(record["lrs"], losses, marker="o", color=colors[w], label=f"d={w}")
            best = record["optimum_lr"][p][str(w)]
            ax.axvline(best, color=colors[w], ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate η₀")
        ax.set_ylabel("final validation loss (nats/byte)")
        ax.set_title(f"{p.upper()}" + (f" (base width {record['base_width']})" if p == "mup" else ""))
        ax.legend(fontsize=8)
    ax = axes[2]
    for p, style in (("sp", "o--"), ("mup", "s-")):
        ax.plot(record["widths"], [record["optimum_lr"][p][str(w)] for w in record["widths"]], style, label=p.upper())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("width d_model")
    ax.set_ylabel("optimal η₀ (parabola in log2 lr)")
    ax.set_title("optimum's movement across width")
    ax.legend()
    fig.suptitle(f"lr transfer: 4 blocks, heads of 32, {record['tokens']:,} byte tokens per run, Muon + AdamW, "
                 f"cosine, wd 0.1, seed {record['seed']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--lrs", default="0.005,0.01,0.02,0.04,0.08", help="a factor-2 grid")
    parser.add_argument("--base", type=int, default=0, help="muP base width (0: the middle width)")
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "mup_lr_transfer"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "mup_lr_transfer.png"))
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    args.base = args.base or sorted(widths)[len(widths) // 2]
    grid = {(p, w, lr): run_config(args, p, w, lr) for p in ("sp", "mup") for w in widths for lr in lrs}
    unique = {c.run_dir: c for c in grid.values()}
    run_configs(list(unique.values()), workers=args.workers)
    val = {p: {str(w): [final_val_loss(grid[p, w, lr]) for lr in lrs] for w in widths} for p in ("sp", "mup")}
    command = shlex.join(["python", "benchmarks/mup_lr_transfer.py", *sys.argv[1:]])
    record = {"command": command, "widths": widths, "lrs": lrs, "base_width": args.base, "tokens": args.tokens,
              "seed": args.seed, "val_loss": val,
              "optimum_lr": {p: {w: optimum(lrs, losses) for w, losses in v.items()} for p, v in val.items()},
              "runs": sorted(unique)}
    out = Path(args.out)
    plot(record, out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    for p in ("sp", "mup"):
        print(p, {w: f"{lr:.4g}" for w, lr in record["optimum_lr"][p].items()})
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
