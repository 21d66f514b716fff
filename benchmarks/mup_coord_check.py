"""The muP coordinate check as a figure: activation RMS against width, SP above, muP below.

For each parametrization, ``muonlab.experiments.coord_check.coordinate_check`` trains a 2-block model
(heads of 32 channels, byte-sized vocab, Zipf tokens) at each width for a few Muon steps at one
learning rate, and records after every step the RMS of the embedding output, each block's attention
and MLP outputs, and the logits. Each panel draws one line per step (light: init, dark: last step).
Under SP the lines slope upward (activations grow with width); under muP they stay level. The
log-log slope of every activation at the last step is printed and written beside the figure as JSON.

    python benchmarks/mup_coord_check.py                    # writes docs/mup_coord_check.png (+ .json)
    python benchmarks/mup_coord_check.py --widths 64,128,256 --steps 3 --out /tmp/cc.png
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from muonlab.experiments.coord_check import coordinate_check, loglog_slope

PANELS = (("embedding", "embedding output"), ("attn/1", "block 1 attention output"),
          ("mlp/1", "block 1 MLP output"), ("logits", "logits"))


def plot(results: dict[str, dict[int, list[dict[str, float]]]], lr: float, path: Path) -> None:
    fig = Figure(figsize=(4 * len(PANELS), 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), len(PANELS), squeeze=False)
    for row, (parametrization, by_width) in enumerate(results.items()):
        widths = sorted(by_width)
        steps = len(by_width[widths[0]])
        for col, (name, title) in enumerate(PANELS):
            ax = axes[row][col]
            for t in range(steps):
                shade = 0.25 + 0.75 * t / max(1, steps - 1)
                ax.plot(widths, [by_width[w][t][name] for w in widths], marker="o", ms=3,
                        color=(0.1, 0.3, 0.8, shade), label=f"step {t}" if col == 0 else None)
            slope = loglog_slope(widths, [by_width[w][-1][name] for w in widths])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization.upper()}: {title}\nslope at step {steps - 1}: {slope:+.2f}", fontsize=10)
            ax.set_xlabel("width d_model")
            if col == 0:
                ax.set_ylabel("RMS of the activation")
                ax.legend(fontsize=7)
    fig.suptitle(f"Coordinate check: Muon (Moonlight scale) + AdamW, lr {lr}, 2 blocks, batch 8×32 Zipf tokens")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "mup_coord_check.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    results = {p: coordinate_check(p, widths, steps=args.steps, lr=args.lr, batch=8, seed=args.seed)
               for p in ("sp", "mup")}
    out = Path(args.out)
    plot(results, args.lr, out)
    slopes = {p: {name: round(loglog_slope(widths, [r[w][-1][name] for w in widths]), 3) for name in r[widths[0]][-1]}
              for p, r in results.items()}
    command = shlex.join(["python", "benchmarks/mup_coord_check.py", *sys.argv[1:]])
    record = {"command": command, "widths": widths, "steps": args.steps, "lr": args.lr, "seed": args.seed,
              "slopes_at_last_step": slopes, "rms": {p: {str(w): r[w] for w in widths} for p, r in results.items()}}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    for p, s in slopes.items():
        print(p, s)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
