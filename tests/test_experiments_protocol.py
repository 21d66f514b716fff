"""The protocol helpers of study reports: seeds (what a seed changes), mean ± std, gaps, pairing, epochs,
and the "paper claim vs small-scale result" table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from muonlab.analysis.runs import Run
from muonlab.experiments.protocol import (
    ClaimCheck,
    MeanStd,
    by_seed,
    claim_section,
    combined_verdict,
    epochs,
    mean_std,
    paired,
    paired_by_seed,
    protocol_section,
    tokens_to_reach,
)
from muonlab.parallel import init_runtime
from muonlab.train.loop import build_training, seed_everything


def test_mean_std_is_the_sample_std():
    m = mean_std([3.0, 3.5, 4.5])
    assert m.mean == pytest.approx(11 / 3)
    assert m.std == pytest.approx(math.sqrt(((3 - 11 / 3) ** 2 + (3.5 - 11 / 3) ** 2 + (4.5 - 11 / 3) ** 2) / 2))
    assert m.n == 3 and str(m) == "3.6667 ± 0.7638 (3 seeds)"
    assert mean_std([2.0]) == MeanStd(2.0, None, 1) and str(mean_std([2.0])) == "2.0000 (1 seed)"
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_std([1.0, float("nan")])


def test_a_paired_verdict_reads_the_per_seed_differences_not_the_spreads():
    # Arms whose seed-to-seed spread (≈ 0.1) dwarfs the gap (0.01) but whose every seed moves the same way.
    a = {0: 4.0, 1: 4.1, 2: 4.2}
    b = {0: 4.011, 1: 4.109, 2: 4.21}
    d = paired(a, b)
    assert d.mean == pytest.approx(0.01, abs=1e-9) and d.separated and d.verdict(+1) is True
    assert paired(a, {0: 4.02, 1: 4.09, 2: 4.21}).verdict(+1) is None  # signs disagree: cannot tell
    assert paired({0: 1.0}, {1: 1.0}) is None  # no seed in common


def test_combined_verdicts():
    assert combined_verdict([True, True]) is True
    assert combined_verdict([True, None]) is None
    assert combined_verdict([True, False, None]) is False
    assert combined_verdict([]) is None


def _run(name: str, optimizer: str, seed: int, final: float, tokens: int = 500, **config) -> Run:
    cfg = {"optimizer": optimizer, "seed": seed, "lr": 3e-3, "run_dir": f"/x/{name}", "command": f"cmd {name}",
           "corpus": "english", "tokenizer": "bpe", "eval_batches": 8, "batch_size": 16, "seq_len": 256,
           "train_split_tokens": 1000, **config}
    rows = [{"step": 1, "tokens": tokens // 2, "loss": 9.0}, {"step": 2, "tokens": tokens, "val_loss": final}]
    return Run(name=name, path=Path(f"/x/{name}"), config=cfg, rows=rows)


def test_paired_by_seed_pairs_runs_that_differ_only_in_the_optimizer():
    runs = [_run("a1", "adamw", 1, 4.0), _run("m0", "muon", 0, 3.8), _run("a0", "adamw", 0, 4.1),
            _run("m1", "muon", 1, 3.9)]
    assert [(s, a.name, m.name) for s, a, m in paired_by_seed(runs)] == [(0, "a0", "m0"), (1, "a1", "m1")]
    with pytest.raises(ValueError, match=r"seed 2 has runs of \['adamw'\]"):
        paired_by_seed([*runs, _run("a2", "adamw", 2, 4.0)])
    with pytest.raises(ValueError, match=r"differ in \['lr'\], not only in the optimizer"):
        paired_by_seed([_run("a0", "adamw", 0, 4.0), _run("m0", "muon", 0, 3.9, lr=1e-2)])


def test_epochs_and_the_protocol_paragraph():
    runs = [_run("a0", "adamw", 0, 4.0, tokens=500), _run("m0", "muon", 0, 3.9, tokens=2500)]
    assert epochs(runs[0]) == 0.5 and epochs(runs[1]) == 2.5
    no_split = _run("x", "muon", 0, 3.9)
    del no_split.config["train_split_tokens"]
    assert epochs(no_split) is None
    text = protocol_section(runs)
    assert "Seeds: 0 (1; a claimed difference needs ≥ 3)" in text
    assert "32,768 tokens: 8 batches" in text  # 8 × 16 × 256
    assert "english corpus, bpe tokens, 1,000 training tokens; each run saw its training data 0.50–2.50 times" in text


def test_tokens_to_reach_interpolates_between_evaluations():
    run = Run(name="m", path=Path("/x/m"), config={}, rows=[
        {"step": 1, "tokens": 100, "loss": 9.0},  # a training row: no val_loss
        {"step": 2, "tokens": 200, "val_loss": 5.0},
        {"step": 4, "tokens": 400, "val_loss": 4.0},
        {"step": 6, "tokens": 600, "val_loss": 3.5},
    ])
    assert tokens_to_reach(run, 4.5) == pytest.approx(300.0)  # halfway from 5.0 at 200 to 4.0 at 400
    assert tokens_to_reach(run, 3.75) == pytest.approx(500.0)
    assert tokens_to_reach(run, 4.0) == pytest.approx(400.0)
    assert tokens_to_reach(run, 6.0) == 200.0  # already below at the first evaluation
    assert tokens_to_reach(run, 3.0) is None
    assert tokens_to_reach(run, 9.5, key="loss") == 100.0


def test_claim_section_says_plainly_whether_the_direction_agrees():
    text = claim_section([
        ClaimCheck("Muon beats AdamW (paper: 2×)", "Muon 0.1 lower", True, "5× the seed std"),
        ClaimCheck("x | y", "z", False, "0.3 nats the wrong way"),
        ClaimCheck("w", "too few seeds", None, "—"),
    ])
    lines = text.splitlines()
    assert lines[0] == "| paper claim | small-scale result | direction agrees? | by how much |"
    assert lines[2] == "| Muon beats AdamW (paper: 2×) | Muon 0.1 lower | yes | 5× the seed std |"
    assert lines[3] == "| x \\| y | z | **no** | 0.3 nats the wrong way |"
    assert lines[4].endswith("| cannot tell | — |")


def test_a_seed_sets_initialisation_and_data_order_and_both_optimizers_share_them(tiny_config, single_thread):
    """Why studies need no separate data seed: TrainConfig.seed drives both, the optimizer neither."""
    runtime = init_runtime("none", "cpu")

    def start(config):
        seed_everything(config.seed)
        training = build_training(config, runtime)
        weights = {k: v.clone() for k, v in training.model.state_dict().items()}
        batches = [training.loader.next_batch()[0] for _ in range(3)]
        return weights, torch.stack(batches)

    adamw = start(tiny_config("a", optimizer="adamw", seed=1))
    muon = start(tiny_config("m", optimizer="muon", seed=1))
    other = start(tiny_config("o", optimizer="adamw", seed=2))
    assert all(torch.equal(adamw[0][k], muon[0][k]) for k in adamw[0]) and torch.equal(adamw[1], muon[1])
    matrices = [k for k, v in adamw[0].items() if v.dim() == 2]
    assert matrices and all(not torch.equal(adamw[0][k], other[0][k]) for k in matrices)
    assert not torch.equal(adamw[1], other[1])


def test_by_seed_maps_each_run_to_its_seed():
    runs = [_run("a0", "adamw", 0, 4.0), _run("a2", "adamw", 2, 3.5)]
    assert by_seed(runs) == {0: 4.0, 2: 3.5}
    assert by_seed(runs, lambda r: None if r.name == "a0" else 1.0) == {2: 1.0}
