"""SVD entropy: values, Moonlight's matrix groups, the two-run report and ``muonlab analyze spectra``."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from muonlab.analysis.runs import load_run
from muonlab.analysis.spectra import group_means, layer_of, matrix_group
from muonlab.analysis.spectra_report import entropy_rows
from muonlab.cli import main
from muonlab.models import ModelConfig, Transformer
from muonlab.rundir.finished import write_finished
from muonlab.spectra import svd_entropies, svd_entropy
from muonlab.train.loop import train


def test_svd_entropy_values():
    assert svd_entropy(torch.eye(5)) == pytest.approx(1.0)
    assert svd_entropy(torch.outer(torch.arange(1.0, 4.0), torch.arange(1.0, 6.0))) == pytest.approx(0.0, abs=1e-12)
    # sigma = (2, 1): p = (4/5, 1/5); H = -(0.8 ln 0.8 + 0.2 ln 0.2) / ln 2.
    rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64)).Q
    m = rotation[:, :2] @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert svd_entropy(m) == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2))


@pytest.mark.parametrize(
    "name, group",
    [
        ("svd_entropy/layers.2.attn.wq.weight", "AttnQO"),
        ("layers.2.attn.wo.weight", "AttnQO"),
        ("layers.2.attn.wq_rope.weight", "AttnQO"),
        ("layers.2.attn.wk.weight", "AttnKV"),
        ("layers.2.attn.wkv_down.weight", "AttnKV"),
        ("layers.2.attn.wv_up.weight", "AttnKV"),
        ("svd_entropy/layers.2.mlp.w_gate/13", "Experts"),
        ("layers.2.mlp.w_down/0", "Experts"),
        ("layers.2.mlp.shared.w_up.weight", "SharedExperts"),
        ("layers.2.mlp.router", "Router"),
        ("layers.0.mlp.w_gate.weight", "Dense"),
        ("layers.0.mlp.w_out.weight", "Dense"),
        ("lm_head.weight", None),
    ],
)
def test_matrix_groups_follow_moonlight_figure_4(name, group):
    assert matrix_group(name) == group


def test_group_means_macro_average_over_layers():
    values = {
        "layers.0.attn.wq.weight": 0.9, "layers.0.attn.wo.weight": 0.7,  # layer 0 QO mean 0.8
        "layers.1.attn.wq.weight": 0.5,  # layer 1 QO mean 0.5
        "layers.1.mlp.router": 0.4, "embed.weight": 0.1,
    }  # fmt: skip
    assert group_means(values) == pytest.approx({"AttnQO": 0.65, "Router": 0.4})
    assert layer_of("svd_entropy/layers.12.mlp.router") == 12 and layer_of("norm.weight") is None


def _fake_run(path, optimizer, rows):
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"optimizer": optimizer, "command": f"muonlab train --optimizer {optimizer}"})
    )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = rows[-1]["step"]
    write_finished(path, step=last, total_steps=last, tokens=0, checkpoint=f"step_{last:08d}", final_val_loss=3.0)
    return path


NAMES = ["layers.0.attn.wq.weight", "layers.0.attn.wk.weight", "layers.1.mlp.w_gate/0", "layers.1.mlp.w_gate/1",
         "layers.1.mlp.router"]


def test_report_table_and_fraction(tmp_path, capsys):
    muon = {"layers.0.attn.wq.weight": 0.9, "layers.0.attn.wk.weight": 0.8, "layers.1.mlp.w_gate/0": 0.7,
            "layers.1.mlp.w_gate/1": 0.5, "layers.1.mlp.router": 0.6}
    adamw = {"layers.0.attn.wq.weight": 0.8, "layers.0.attn.wk.weight": 0.85, "layers.1.mlp.w_gate/0": 0.6,
             "layers.1.mlp.w_gate/1": 0.4, "layers.1.mlp.router": 0.3}
    early = {f"svd_entropy/{n}": 0.99 for n in NAMES}
    a = _fake_run(tmp_path / "adamw", "adamw", [{"step": 5, "loss": 3.0, **early},
                                                 {"step": 10, **{f"svd_entropy/{k}": v for k, v in adamw.items()}}])
    m = _fake_run(tmp_path / "muon", "muon", [{"step": 5, **early},
                                               {"step": 10, **{f"svd_entropy/{k}": v for k, v in muon.items()}}])
    out = tmp_path / "out"
    # Given in AdamW, Muon order: the report still puts Muon first.
    assert main(["analyze", "spectra", str(a), str(m), "--out", str(out)]) == 0
    text = (out / "spectra.md").read_text()
    assert "| AttnQO | 0.9000 | 0.8000 | +0.1000 | 1 | 100.0% |" in text
    assert "| AttnKV | 0.8000 | 0.8500 | -0.0500 | 1 | 0.0% |" in text
    assert "| Experts | 0.6000 | 0.5000 | +0.1000 | 2 | 100.0% |" in text
    assert "| Router | 0.6000 | 0.3000 | +0.3000 | 1 | 100.0% |" in text
    assert "| **all** | 0.7000 | 0.5900 | +0.1100 | 5 | 80.0% |" in text
    assert "| 5 |" in text and "| 10 |" in text  # the over-training table
    assert "Baseline, the first logged step" in text and "muon (muon) at step 5: AttnQO 0.9900" in text
    assert (out / "spectra.png").stat().st_size > 10_000
    assert "spectra report:" in capsys.readouterr().out


def test_run_without_entropies_is_a_clear_error(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "adamw", [{"step": 1, "loss": 3.0}])
    b = _fake_run(tmp_path / "b", "muon", [{"step": 1, "svd_entropy/layers.0.attn.wq.weight": 0.5}])
    assert main(["analyze", "spectra", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no SVD entropy" in err and "--spectra_every" in err and str(a) in err


def test_entropies_from_the_final_checkpoint(tiny_config, single_thread):
    summary = train(tiny_config(spectra_every=0))
    rows = entropy_rows(load_run(summary.run_dir))
    assert len(rows) == 1 and rows[0]["step"] == summary.steps
    record = json.loads((summary.run_dir / "config.json").read_text())
    model = Transformer(ModelConfig.from_dict(record["model_config"]))
    ckpt = next((summary.run_dir / "checkpoints").glob("step_*"))
    model.load_state_dict(load_file(ckpt / "model.safetensors"), strict=False)
    expected = svd_entropies(model)
    assert set(rows[0]) - {"step"} == set(expected)
    assert all(rows[0][k] == pytest.approx(v) for k, v in expected.items())
