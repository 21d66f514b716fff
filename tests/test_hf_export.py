"""``muonlab export`` and ``muonlab train --init_from``: muonlab runs as Hugging Face folders and back.

Checks: transformers' logits of an exported dense (Llama) and MoE + MLA (DeepSeek-V3) run equal
muonlab's on the same tokens within fp32 rounding; the exported tokenizer encodes and decodes as
the run's and pads (on the left) for batched ``generate()``; the exported files get the mode any new
file gets (not owner-only); a run started from the export has, at its first step, the loss the original model
gives that batch; plain transformers Llama / DeepSeek-V3 folders import with equal logits; every
bad input is one sentence and changes nothing.
"""

import json
import os
import re
import stat

import pytest
import torch

from muonlab.cli import main
from muonlab.data import TokenLoader, prepare_dataset
from muonlab.integrations.hf_convert import HFFormatError
from muonlab.integrations.hf_import import read_hf_folder
from muonlab.integrations.hf_tokenizer import write_tokenizer
from muonlab.models import ModelConfig, Transformer
from muonlab.rundir import read_config, read_metrics
from muonlab.rundir.checkpoint import latest_checkpoint, load_checkpoint
from muonlab.train.config import ConfigError, TrainConfig
from muonlab.train.loop import train

from conftest import tiny_config_dict
from hf_models import build

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

RUNS = {
    "dense-byte": dict(),
    "dense-bpe-tied": dict(tokenizer="bpe", vocab_size=300, tie_embeddings=True),
    "moe-mla": dict(model="moe-tiny", train_tokens=32 * 4 * 8),
}
TEXTS = ["In the beginning God created the heaven and the earth.", "  two  spaces\tand a tab\n",
         "héllo wörld ✓ 漢字 🎉", "a literal <|endoftext|> stays text"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus):
    """One trained run of each kind in RUNS, and its export."""
    root = tmp_path_factory.mktemp("hf-export")
    cache = tmp_path_factory.mktemp("hf-export-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(cache))
        out = {}
        for name, overrides in RUNS.items():
            config = TrainConfig(**tiny_config_dict(tiny_corpus, root / name, **overrides))
            train(config)
            assert main(["export", config.run_dir, "--out", str(root / f"{name}-hf")]) == 0
            out[name] = (config, root / f"{name}-hf")
    return out, cache


@pytest.fixture
def in_cache(runs, monkeypatch):
    monkeypatch.setenv("MUONLAB_CACHE", str(runs[1]))
    return runs[0]


def _trained(config):
    model = Transformer(ModelConfig.from_dict(read_config(config.run_dir)["model_config"]))
    load_checkpoint(latest_checkpoint(config.run_dir), model, None, restore_rng=False)
    return model.eval()


def _data(config):
    return prepare_dataset(config.corpus, tokenizer=config.tokenizer, vocab_size=config.vocab_size,
                           val_fraction=config.val_fraction)


@pytest.mark.parametrize("name", list(RUNS))
def test_transformers_logits_equal_muonlab_logits(in_cache, name):
    config, folder = in_cache[name]
    assert json.loads((folder / "config.json").read_text())["model_type"] == ("deepseek_v3" if "moe" in name
                                                                             else "llama")
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    hf_model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.from_numpy(_data(config).val_tokens[: 2 * 32].astype("int64")).view(2, 32)
    with torch.no_grad():
        ours, theirs = _trained(config)(ids), hf_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
    assert float(ours.abs().max()) > 1.0  # trained logits, not a near-zero comparison


@pytest.mark.parametrize("name", ["dense-byte", "dense-bpe-tied"])
def test_the_exported_tokenizer_round_trips(in_cache, name):
    config, folder = in_cache[name]
    ours = _data(config).tokenizer
    theirs = tf.AutoTokenizer.from_pretrained(folder)
    assert theirs.eos_token_id == ours.eot_id
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ids == ours.encode(text), text
        assert theirs.decode(ids) == text == ours.decode(ids)


def test_the_exported_tokenizer_pads_for_batched_generation(in_cache):
    """A batch of prompts of different lengths needs a pad token; padded on the left, each row continues
    greedily exactly as its prompt does alone (without a pad token the batch cannot be built at all)."""
    _, folder = in_cache["dense-bpe-tied"]
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.padding_side == "left"
    prompts = ["In the beginning God created the heaven", "And"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] > lengths[1]  # the second row is padded
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        together = model.generate(**batch, **greedy)[:, -6:]
        alone = [model.generate(**tokenizer([p], return_tensors="pt"), **greedy)[0, -6:] for p in prompts]
    assert together.tolist() == [row.tolist() for row in alone]


def test_exported_files_are_readable_like_any_other_output(in_cache, tmp_path):
    """Under the usual umask 022 every exported file is 0644 and every folder 0755, as any new file and
    folder; safetensors and the temporary folder alone would leave model.safetensors and the folder
    owner-only (0600 / 0700)."""
    config, _ = in_cache["dense-byte"]
    umask = os.umask(0o022)
    try:
        assert main(["export", config.run_dir, "--out", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(umask)
    paths = [tmp_path / "hf", *(tmp_path / "hf").rglob("*")]
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert "hf/model.safetensors" in modes and "hf/tokenizer.json" in modes
    assert modes == {name: 0o755 if (tmp_path / name).is_dir() else 0o644 for name in modes}


@pytest.mark.parametrize("name", ["dense-bpe-tied", "moe-mla"])
def test_init_from_continues_with_the_loss_of_the_exported_model(in_cache, name, tmp_path):
    config, folder = in_cache[name]
    again = config.replace(run_dir=str(tmp_path / "again"), init_from=str(folder), tokenizer="bpe", log_every=1,
                           train_tokens=32 * 4 * 2, model="demo", tie_embeddings=False)
    train(again)
    first = next(row for row in read_metrics(again.run_dir) if row["step"] == 1)
    x, y = TokenLoader(_data(config).train_tokens, config.batch_size, config.seq_len, seed=config.seed).next_batch()
    model = _trained(config).train()  # the training forward, as the first step runs it
    with torch.no_grad():
        expected = float(model(x, y))
    assert first["loss"] == pytest.approx(expected, rel=1e-6, abs=0)


def _save_hf(model, folder):
    model.save_pretrained(folder)
    from muonlab.data import ByteTokenizer

    write_tokenizer(ByteTokenizer(), folder, 64)


@pytest.mark.parametrize("name, interleave", [("llama", None), ("deepseek_v3", True), ("deepseek_v3", False)])
def test_plain_transformers_folders_import_with_equal_logits(name, interleave, tmp_path):
    hf_model = build(name, vocab_size=257, **({"rope_interleave": interleave} if name == "deepseek_v3" else {}))
    with torch.no_grad():
        for module in hf_model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0, 0.05)
    _save_hf(hf_model, tmp_path)
    source = read_hf_folder(tmp_path)
    model = Transformer(source.model_config)
    source.load_into(model)
    ids = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), hf_model.eval()(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_bad_exports_are_one_sentence_and_write_nothing(in_cache, tmp_path, capsys, tiny_config):
    config, _ = in_cache["dense-byte"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "nothing-here"), "--out", str(tmp_path / "a")], r"is not a run folder: it has no config.json"),
        ([config.run_dir, "--out", str(taken)], r"already exists and is not an empty folder; choose a new --out"),
    ]
    gelu = tiny_config("gelu", mlp="gelu", train_tokens=32 * 4 * 2)
    train(gelu)
    cases.append(([gelu.run_dir, "--out", str(tmp_path / "b")], r"ModelConfig.mlp is 'gelu', but Llama and "
                                                                 r"DeepSeek-V3 in transformers have gated"))
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("muonlab export: error: ")
        assert re.search(message, err), err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in taken.iterdir()] == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_bad_init_from_folders_are_one_sentence(tmp_path, tiny_config):
    with pytest.raises(HFFormatError, match=r"is not a Hugging Face model folder: it has no config.json"):
        read_hf_folder(tmp_path)
    gpt2 = tmp_path / "gpt2"
    _save_hf(build("gpt2", vocab_size=257), gpt2)
    with pytest.raises(HFFormatError, match=r"holds a 'gpt2' model, which has no muonlab equivalent"):
        read_hf_folder(gpt2)
    biased = tmp_path / "biased"
    _save_hf(build("llama", vocab_size=257, attention_bias=True), biased)
    with pytest.raises(HFFormatError, match=r"the llama config has attention_bias=True, which muonlab's model"):
        read_hf_folder(biased)
    no_tokenizer = tmp_path / "no-tokenizer"
    build("llama").save_pretrained(no_tokenizer)
    with pytest.raises(HFFormatError, match=r"has no tokenizer.json"):
        read_hf_folder(no_tokenizer)
    llama = tmp_path / "llama"
    _save_hf(build("llama", vocab_size=257), llama)
    with pytest.raises(HFFormatError, match=r"seq_len=128 exceeds the max_position_embeddings=64"):
        read_hf_folder(llama, seq_len=128)
    with pytest.raises(ConfigError, match=r"d_model=64 cannot change the model of init_from="):
        tiny_config(init_from=str(llama), d_model=64)
    run = tiny_config("from-gpt2", init_from=str(gpt2))
    with pytest.raises(HFFormatError, match="'gpt2' model"):
        train(run)
    assert not (tmp_path / "from-gpt2" / "checkpoints").exists()
