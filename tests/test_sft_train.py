"""Fine-tuning runs (``task="sft"``, ``muonlab sft``) from a tiny pretrained run folder, on a JSONL of
conversations: the response-only validation loss falls, the run starts from the pretrained weights
with Moonlight's linear decay to 0, resumes exactly, exports with its chat template, and every bad
input stops with one sentence before anything is written.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from muonlab.cli import main
from muonlab.data import DataError, TokenLoader
from muonlab.data.chat import CHAT_TEMPLATE
from muonlab.data.sft import prepare_sft, tokenize_conversation
from muonlab.models import ModelConfig, Transformer
from muonlab.rundir import read_config, read_metrics
from muonlab.rundir.checkpoint import latest_checkpoint, load_checkpoint
from muonlab.train import loop
from muonlab.train.config import ConfigError, TrainConfig
from muonlab.train.init_source import InitFromError, read_init_source
from muonlab.train.loop import train

from conftest import _WORDS, interrupt_after_checkpoint, tiny_config_dict

SEQ = 128
STEPS = 40


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here trains on one torch thread (see conftest.single_thread)."""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_corpus, muonlab_cache_dir):
    """A tiny byte-level model pretrained on the tiny corpus (rows of 128 tokens), and a JSONL task:
    two words in, the same words reversed and upper-cased out."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        words = [rng.choice(_WORDS) for _ in range(2)]
        rows.append({"prompt": " ".join(words), "response": " ".join(w.upper() for w in reversed(words))})
    (root / "task.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    threads = torch.get_num_threads()  # one thread, as in the tests (module fixtures start before theirs)
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        train(TrainConfig(**tiny_config_dict(tiny_corpus, root / "pre", seq_len=SEQ, train_tokens=SEQ * 4 * 20)))
    torch.set_num_threads(threads)
    return root


def _sft_values(root, run_dir, **overrides) -> dict:
    values = dict(run_dir=str(run_dir), init_from=str(root / "pre"), corpus=str(root / "task.jsonl"),
                  seq_len=SEQ, batch_size=4, train_tokens=SEQ * 4 * STEPS, val_fraction=0.1, eval_every=5,
                  eval_batches=2, log_every=5, telemetry_every=0, progress=False, device="cpu", dtype="fp32")
    values.update(overrides)
    return values


def _argv(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in (f"--{key}", str(value))]


def test_muonlab_sft_lowers_the_response_loss_with_a_linear_decay_to_zero(pretrained, tmp_path, muonlab_cache):
    values = _sft_values(pretrained, tmp_path / "sft", optimizer="muon", lr=3e-3)
    assert main(["sft", *_argv(values)]) == 0
    record = read_config(tmp_path / "sft")
    assert (record["task"], record["schedule"], record["warmup_steps"], record["final_lr_ratio"]) == ("sft", "linear",
                                                                                                        0, 0.0)
    assert record["dataset"].startswith(f"fine-tuning data {values['corpus']!r}")
    rows = read_metrics(tmp_path / "sft")
    val = [row["val_loss"] for row in rows if "val_loss" in row]
    assert len(val) == STEPS // 5 and val[-1] < 0.75 * val[0], val
    for row in rows:
        if "lr" in row:  # the lr of step s is the peak times 1 - (s - 1) / STEPS
            assert row["lr"] == pytest.approx(3e-3 * (1 - (row["step"] - 1) / STEPS), rel=1e-12)


def test_sft_starts_from_the_pretrained_weights(pretrained, tmp_path, muonlab_cache):
    config = TrainConfig(**_sft_values(pretrained, tmp_path / "sft", task="sft", train_tokens=SEQ * 4 * 2,
                                       log_every=1))
    train(config)
    first = next(row for row in read_metrics(config.run_dir) if row["step"] == 1)
    source = read_init_source(pretrained / "pre")
    model = Transformer(ModelConfig.from_dict(read_config(pretrained / "pre")["model_config"]))
    load_checkpoint(latest_checkpoint(pretrained / "pre"), model, None, restore_rng=False)
    data = prepare_sft(config.corpus, source.tokenizer, SEQ, config.val_fraction)
    x, y = TokenLoader(data.train.tokens, 4, SEQ, seed=config.seed, labels=data.train.labels).next_batch()
    with torch.no_grad():
        expected = float(model.train()(x, y))
    assert first["loss"] == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_sft_resume_matches_the_uninterrupted_run(pretrained, tmp_path, muonlab_cache, monkeypatch, optimizer):
    settings = dict(task="sft", schedule="linear", final_lr_ratio=0.0, optimizer=optimizer, train_tokens=SEQ * 4 * 10,
                    checkpoint_every=5, eval_every=5, log_every=1)
    full = TrainConfig(**_sft_values(pretrained, tmp_path / "full", **settings))
    split = TrainConfig(**_sft_values(pretrained, tmp_path / "split", **settings))
    full_summary = train(full)
    real_save = interrupt_after_checkpoint(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    summary = train(split)
    timing = {"tokens_per_s", "wall_s", "optim_step_ms"}
    full_rows, split_rows = ([{k: v for k, v in row.items() if k not in timing} for row in read_metrics(c.run_dir)]
                             for c in (full, split))
    assert split_rows == full_rows and summary.final_val_loss == full_summary.final_val_loss


def test_export_of_a_fine_tuned_run_carries_the_chat_template(pretrained, tmp_path, muonlab_cache):
    transformers = pytest.importorskip("transformers")
    config = TrainConfig(**_sft_values(pretrained, tmp_path / "sft", task="sft", train_tokens=SEQ * 4 * 2))
    tuned = train(config)
    assert main(["export", config.run_dir, "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(pretrained / "pre"), "--out", str(tmp_path / "base")]) == 0
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert "chat_template" not in json.loads((tmp_path / "base" / "tokenizer_config.json").read_text())
    chat = [{"role": "user", "content": "the of"}, {"role": "assistant", "content": "OF THE"}]
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").apply_chat_template(chat, return_dict=False)
    expected = tokenize_conversation(read_init_source(config.run_dir).tokenizer, chat)
    assert ids == expected[0][:-1]
    assert tokenize_conversation(read_init_source(tmp_path / "hf").tokenizer, chat) == expected  # the folder's own
    again = TrainConfig(**_sft_values(pretrained, tmp_path / "again", task="sft", init_from=str(tmp_path / "hf"),
                                      train_tokens=SEQ * 4 * 2, lr=0.0))  # lr 0: the exported weights, unchanged
    assert train(again).final_val_loss == pytest.approx(tuned.final_val_loss, rel=1e-6, abs=0)


def _one_sentence(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"muonlab {argv[0]}: error: ")
    return err


def test_bad_fine_tuning_inputs_are_one_sentence_and_write_nothing(pretrained, tmp_path, muonlab_cache, capsys):
    with pytest.raises(ConfigError, match=r"task='sft' fine-tunes a trained model; set init_from to a run folder"):
        TrainConfig(task="sft")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "no answer"}\n')
    err = _one_sentence(["sft", *_argv(_sft_values(pretrained, tmp_path / "r1", corpus=str(bad)))], capsys)
    assert f"line 2 of {bad} has no response" in err
    err = _one_sentence(["sft", *_argv(_sft_values(pretrained, tmp_path / "r2", seq_len=256))], capsys)
    assert "seq_len=256 exceeds the max_seq_len=128 of the model in" in err
    with pytest.raises(InitFromError, match=r"init_from \S+nowhere is neither a muonlab run folder nor a Hugging Face"):
        read_init_source(tmp_path / "nowhere")
    empty = tmp_path / "unfinished"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(read_config(pretrained / "pre")))
    with pytest.raises(InitFromError, match=r"run folder \S+unfinished has no complete checkpoint to start from yet"):
        read_init_source(empty)
    for name in ("r1", "r2"):
        assert not (tmp_path / name / "config.json").exists() and not (tmp_path / name / "checkpoints").exists()
    with pytest.raises(DataError, match="line 2 of"):
        train(TrainConfig(**_sft_values(pretrained, tmp_path / "r3", task="sft", corpus=str(bad))))
