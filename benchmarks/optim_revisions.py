"""Time one Muon step of this checkout against another checkout's, side by side in one process.

For refactors of the optimizer: the other checkout's ``muonlab.optim`` (torch only, relative imports)
is loaded under another package name, both optimizers and ``torch.optim.Muon`` step the same
matrices with the same gradients, interleaved step by step (the order rotating every step) so machine
noise hits all of them alike, and the medians and the per-step ratio are printed. The updated
weights are also compared, so a refactor that claims "bit-identical" is checked on the same run.

    python benchmarks/optim_revisions.py --other /path/to/old/checkout         # gpt2 and d256 sets
    git worktree add /tmp/base <rev> && python benchmarks/optim_revisions.py --other /tmp/base
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from muonlab.allocator import ensure_fast_allocator
from muonlab.optim import Muon

sys.path.insert(0, str(Path(__file__).parent))
from optim_step import SETS, make_params, sync  # noqa: E402


def load_other_optim(checkout: Path):
    """The ``muonlab.optim`` package of another checkout, imported as ``other_muonlab_optim``."""
    init = checkout / "src" / "muonlab" / "optim" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--other {checkout}: no src/muonlab/optim/__init__.py there; pass a muonlab checkout")
    spec = importlib.util.spec_from_file_location("other_muonlab_optim", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_muonlab_optim"] = module
    spec.loader.exec_module(module)
    return module


def bench(name: str, other, device: torch.device, repeats: int) -> None:
    shapes = SETS[name]
    params = {label: make_params(shapes, device) for label in ("this", "other", "torch")}
    optimizers = {
        "this": Muon(params["this"], algorithm="muon", lr=1e-3, weight_decay=0.1),
        "other": other.Muon(params["other"], algorithm="muon", lr=1e-3, weight_decay=0.1),
        "torch": torch.optim.Muon(params["torch"], lr=1e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
    }
    times = {label: [] for label in optimizers}
    labels = list(optimizers)
    for i in range(repeats + 1):
        # Rotate who goes first: a step right after another optimizer's pays for what that one left
        # in the allocator and the caches, so a fixed order would favour one of them.
        for label in labels[i % 3 :] + labels[: i % 3]:
            opt = optimizers[label]
            sync(device)
            started = time.perf_counter()
            opt.step()
            sync(device)
            if i > 0:  # the first step allocates state
                times[label].append(time.perf_counter() - started)
    same = all(torch.equal(a, b) for a, b in zip(params["this"], params["other"]))
    median = {label: statistics.median(t) for label, t in times.items()}
    pairs = sorted(a / b for a, b in zip(times["this"], times["other"]))
    print(f"\n[{name}] {len(shapes)} matrices, {repeats} interleaved steps, median ms: "
          f"this {median['this'] * 1e3:.1f}, other {median['other'] * 1e3:.1f}, "
          f"torch.optim.Muon {median['torch'] * 1e3:.1f}")
    print(f"  this / other: {median['this'] / median['other']:.3f} (ratio of medians); per-step pairs median "
          f"{statistics.median(pairs):.3f}, range {pairs[0]:.3f}–{pairs[-1]:.3f}")
    print(f"  vs torch.optim.Muon: this {median['this'] / median['torch']:.3f}, other "
          f"{median['other'] / median['torch']:.3f}")
    print(f"  weights after {repeats + 1} steps bit-identical between the checkouts: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="another muonlab checkout (its src/ is used)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    ensure_fast_allocator([os.path.abspath(__file__), *sys.argv[1:]])
    other = load_other_optim(args.other.resolve())
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator {os.environ.get('MUONLAB_ALLOCATOR', 'default')}, other: {args.other}")
    for name in args.sets:
        bench(name, other, device, args.repeats)


if __name__ == "__main__":
    main()
