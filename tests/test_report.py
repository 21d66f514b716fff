import json
import statistics

import pytest

from muonlab.analysis.report import write_report
from muonlab.analysis.runs import group_by_config, load_run

STEPS = 40
EVAL_EVERY = 10
TOKENS_PER_STEP = 2048


def make_run(root, name, optimizer, seed, final_val, lr=0.02, rms=0.2):
    """A run folder with synthetic metrics: val loss decays to ``final_val``; known telemetry."""
    run = root / name
    run.mkdir()
    config = {
        "optimizer": optimizer, "lr": lr, "weight_decay": 0.1, "seed": seed,
        "model": {"d_model": 64, "n_layers": 2},
        "command": ["muonlab", "train", "--optimizer", optimizer, "--lr", str(lr), "--seed", str(seed)],
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    rows = []
    for step in range(1, STEPS + 1):
        row = {
            "step": step, "tokens": step * TOKENS_PER_STEP, "loss": final_val + 4.0 / step, "lr": lr,
            "tokens_per_s": 1000.0 + 10 * step + seed, "wall_s": 0.5 * step, "optim_step_ms": 2.0 + step % 3,
            "update_rms/adamw": rms + 0.001 * (step % 5),
        }  # fmt: skip
        if optimizer == "muon":
            row["update_rms/muon"] = rms - 0.001 * (step % 7)
        if step % EVAL_EVERY == 0:
            row["val_loss"] = final_val + 2.0 * (STEPS - step) / STEPS
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, rows


def test_load_run_series_and_final(tmp_path):
    path, rows = make_run(tmp_path, "muon-s0", "muon", 0, 3.1)
    run = load_run(path)
    assert run.name == "muon-s0" and run.optimizer == "muon" and run.config["lr"] == 0.02
    steps, tokens, values = run.series("val_loss")
    assert steps.tolist() == [10, 20, 30, 40]
    assert tokens.tolist() == [s * TOKENS_PER_STEP for s in [10, 20, 30, 40]]
    assert values[-1] == pytest.approx(3.1)
    assert run.final("val_loss") == pytest.approx(3.1)
    assert run.final("missing") is None
    assert run.median("optim_step_ms") == statistics.median(r["optim_step_ms"] for r in rows)


def test_load_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run folder: it has no config.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no metrics log at"):
        load_run(tmp_path)


def test_group_by_config_ignores_seed(tmp_path):
    runs = [
        load_run(make_run(tmp_path, "a0", "adamw", 0, 3.3)[0]),
        load_run(make_run(tmp_path, "m0", "muon", 0, 3.1)[0]),
        load_run(make_run(tmp_path, "a1", "adamw", 1, 3.3)[0]),
        load_run(make_run(tmp_path, "a-lr", "adamw", 0, 3.3, lr=0.01)[0]),
    ]
    assert [[r.name for r in g] for g in group_by_config(runs)] == [["a0", "a1"], ["m0"], ["a-lr"]]


def test_report_numbers_plots_and_reproduce(tmp_path):
    finals = {"muon": [3.10, 3.12, 3.11], "adamw": [3.30, 3.28, 3.35]}
    run_dirs, all_rows = [], {}
    for optimizer, values in finals.items():
        for seed, final_val in enumerate(values):
            path, rows = make_run(tmp_path, f"{optimizer}-s{seed}", optimizer, seed, final_val)
            run_dirs.append(path)
            all_rows[path.name] = rows

    out = tmp_path / "report"
    report = write_report(run_dirs, out, title="Muon vs AdamW (synthetic)")
    text = report.read_text()
    assert report == out / "report.md"
    assert text.startswith("# Muon vs AdamW (synthetic)\n")

    # Headline, computed independently.
    mean_m, mean_a = statistics.fmean(finals["muon"]), statistics.fmean(finals["adamw"])
    std_m, std_a = statistics.stdev(finals["muon"]), statistics.stdev(finals["adamw"])
    assert f"**muon**: mean final validation loss {mean_m:.4f} over 3 seeds, seed-to-seed std {std_m:.4f}" in text
    assert f"**adamw**: mean final validation loss {mean_a:.4f} over 3 seeds, seed-to-seed std {std_a:.4f}" in text
    gap = mean_m - mean_a
    assert f"muon − adamw = {gap:+.4f}" in text
    assert f"{abs(gap):.4f} lower than adamw's" in text
    assert f"The gap is larger than the seed-to-seed std ({max(std_m, std_a):.4f}), so it exceeds the spread" in text

    # One table row per run.
    rows = all_rows["muon-s1"]
    expected_row = " | ".join([
        "| muon-s1", "muon", "0.02", "0.1", "1", f"{finals['muon'][1]:.4f}", f"{STEPS * TOKENS_PER_STEP:,}",
        f"{statistics.median(r['tokens_per_s'] for r in rows):,.0f}",
        f"{statistics.median(r['optim_step_ms'] for r in rows):.2f}",
        f"{statistics.median(r['update_rms/muon'] for r in rows):.3f}",
        f"{statistics.median(r['update_rms/adamw'] for r in rows):.3f} |",
    ])  # fmt: skip
    assert expected_row in text
    assert "| adamw-s2 | adamw | 0.02 | 0.1 | 2 | 3.3500 |" in text
    assert text.count("\n| muon-s") == 3 and text.count("\n| adamw-s") == 3

    # Plots exist, are linked relatively, and are real images.
    for png in ["val_loss_vs_tokens.png", "val_loss_vs_time.png", "val_loss_by_optimizer.png", "update_rms.png"]:
        assert f"]({png})" in text
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / png).stat().st_size > 20_000, png

    # How to reproduce.
    assert "muonlab train --optimizer muon --lr 0.02 --seed 2" in text
    assert "- `../adamw-s0`" in text


def test_report_says_when_the_gap_is_within_the_spread(tmp_path):
    finals = {"muon": [3.20, 3.30], "adamw": [3.24, 3.31]}
    dirs = [make_run(tmp_path, f"{o}-s{s}", o, s, v)[0] for o, vs in finals.items() for s, v in enumerate(vs)]
    text = write_report(dirs, tmp_path / "out").read_text()
    spread = max(statistics.stdev(v) for v in finals.values())
    assert f"The gap is not larger than the seed-to-seed std ({spread:.4f}), so these runs do not separate" in text


def test_report_single_seed_and_best_config(tmp_path):
    dirs = [
        make_run(tmp_path, "muon", "muon", 0, 3.0)[0],
        make_run(tmp_path, "adamw-lr1", "adamw", 0, 3.5, lr=0.01)[0],
        make_run(tmp_path, "adamw-lr2", "adamw", 0, 3.2, lr=0.02)[0],
    ]
    text = write_report(dirs, tmp_path / "out").read_text()
    assert (
        "**adamw**: mean final validation loss 3.2000 over 1 seed, seed-to-seed std unknown (one seed), "
        "best of 2 configs (lr=0.02)"
    ) in text
    assert "muon − adamw = -0.2000" in text
    assert "the seed-to-seed spread is unknown" in text


def test_report_without_validation_loss(tmp_path):
    path, rows = make_run(tmp_path, "r", "adamw", 0, 3.0)
    without_val = [{k: v for k, v in r.items() if k != "val_loss"} for r in rows]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in without_val))
    text = write_report([path], tmp_path / "out").read_text()
    assert "No run logged a validation loss" in text
    assert "](update_rms.png)" in text and "val_loss_vs_tokens.png" not in text
    assert "| r | adamw | 0.02 | 0.1 | 0 | — |" in text
