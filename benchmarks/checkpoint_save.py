"""Time a checkpoint save with its integrity checks against the save without them, side by side.

A save today writes the files, syncs them, writes ``manifest.json`` (size and XXH3-128 checksum
of every file, hashed while the syncs wait on the disk) and refuses non-finite weights. The
baseline arm is the same save with those two checks swapped for what a save did before them: sync
each file, nothing else. Both arms save the same model and optimizer state (the ``demo`` preset with Muon, after one
step so the momentum exists) into their own run folder, in one process, interleaved — A, B, A, B
— so machine noise (another job on the cores, the disk's cache) hits both alike; the median of
each and their ratio are printed. The ratio is the figure to read: the absolute times depend on
the disk.

    python benchmarks/checkpoint_save.py                   # the demo model, 15 saves per arm
    python benchmarks/checkpoint_save.py --model small --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups
from muonlab.rundir.checkpoint import save_checkpoint, store


def _sync_only(folder: Path) -> None:
    """What a save did before manifests: sync every file it wrote."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


@contextmanager
def _without_checks():
    """The save as it was before checksums and the finite-weights check."""
    import muonlab.rundir.checkpoint as package

    saved = store.write_manifest, package.first_nonfinite
    store.write_manifest, package.first_nonfinite = _sync_only, lambda model: None
    try:
        yield
    finally:
        store.write_manifest, package.first_nonfinite = saved


def _model_and_optimizer(name: str):
    torch.manual_seed(0)
    model = Transformer(preset(name, vocab_size=4096, max_seq_len=256))
    optimizer = Muon(param_groups(model), lr=3e-3)
    x = torch.randint(0, 4096, (2, 256))
    model(x, x).backward()
    optimizer.step()
    return model, optimizer


def _time_save(run_dir: Path, step: int, model, optimizer) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process, all threads) of one save."""
    started, cpu = time.perf_counter(), time.process_time()
    save_checkpoint(run_dir, step, model, optimizer, {"tokens": step}, keep=2)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="model preset (default: demo)")
    parser.add_argument("--repeats", type=int, default=15, help="saves per arm (default: 15)")
    parser.add_argument("--dir", default=None, help="where to save (default: a temporary folder)")
    args = parser.parse_args()

    model, optimizer = _model_and_optimizer(args.model)
    files_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checked, plain = Path(tmp) / "with-checks", Path(tmp) / "without-checks"
        _time_save(checked, 0, model, optimizer)  # warm-up: imports, page cache, allocator
        with _without_checks():
            _time_save(plain, 0, model, optimizer)
        with_checks, without = [], []
        for step in range(1, args.repeats + 1):
            with_checks.append(_time_save(checked, step, model, optimizer))
            with _without_checks():
                without.append(_time_save(plain, step, model, optimizer))
        manifest = (checked / "checkpoints" / f"step_{args.repeats:08d}" / "manifest.json").read_text()
    print(f"model {args.model!r}: {files_mb:.1f} MB of weights, {args.repeats} saves per arm, interleaved, "
          f"in {tmp}; manifest of {manifest.count('bytes')} files")
    for index, what in enumerate(("wall", "CPU")):
        a = statistics.median(t[index] for t in with_checks)
        b = statistics.median(t[index] for t in without)
        print(f"  {what:4s} time: with manifest + finite check {a * 1e3:8.1f} ms, without (sync only) "
              f"{b * 1e3:8.1f} ms, ratio {a / b:.3f}")
    print("  (CPU time counts the work a save adds even when other jobs hold the cores; wall time is what "
          "a run waits)")
    print(f"  torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
