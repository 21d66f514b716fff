"""Byte and BPE tokenizers: round trips, the end-of-text token, and the BPE cache."""

import pytest

import muonlab.data.tokenizer as tokenizer_module
from muonlab.data import EOT_TOKEN, BPETokenizer, ByteTokenizer, DataError, train_bpe

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "naïve café — Ελληνικά, русский, 日本語, emoji 😀👍🏽, tabs\tand\r\nnewlines",
    "def f(x):\n    return x ** 2  # comment\n",
    "literal <|endoftext|> inside text",
    "",
]
TRAIN_DOCS = [
    "the quick brown fox jumps over the lazy dog. " * 20,
    "def square(x):\n    return x * x\n" * 20,
    "héllo wörld, ça va? 日本語のテキスト " * 20,
]


def test_byte_tokenizer_is_utf8_bytes_plus_eot():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.encode("hé😀") == [0x68, 0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80]
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(SAMPLES) == [list(s.encode("utf-8")) for s in SAMPLES]
    assert tok.decode([104, 105, 256, 33]) == "hi" + EOT_TOKEN + "!"
    with pytest.raises(DataError, match="257"):
        tok.decode([257])


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(TRAIN_DOCS, "fingerprint-of-train-docs", 300, tmp_path_factory.mktemp("cache"))


def test_bpe_round_trip_and_eot(bpe):
    assert bpe.eot_id == 0
    assert 257 <= bpe.vocab_size <= 300
    for text in SAMPLES:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert bpe.eot_id not in ids  # even the literal "<|endoftext|>" is plain text
        assert all(0 <= i < bpe.vocab_size for i in ids)
    assert [bpe.encode(s) for s in SAMPLES] == bpe.encode_batch(SAMPLES)
    assert bpe.decode(bpe.encode("a") + [bpe.eot_id] + bpe.encode("b")) == "a" + EOT_TOKEN + "b"


def test_bpe_learns_merges(bpe):
    text = TRAIN_DOCS[0]
    assert len(bpe.encode(text)) < 0.75 * len(text.encode("utf-8"))


def test_bpe_cache_hit_does_not_retrain(tmp_path, monkeypatch):
    first = train_bpe(TRAIN_DOCS, "fp", 280, tmp_path)
    [saved] = (tmp_path / "tokenizers").glob("*.json")
    mtime = saved.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokenizer_module, "_train_bpe_model", no_training)
    second = train_bpe(TRAIN_DOCS, "fp", 280, tmp_path)
    assert saved.stat().st_mtime_ns == mtime
    assert second.id == first.id == saved.stem
    assert second.encode(SAMPLES[1]) == first.encode(SAMPLES[1])
    with pytest.raises(AssertionError, match="reused"):  # another fingerprint or size is a miss
        train_bpe(TRAIN_DOCS, "other fp", 280, tmp_path)


def test_damaged_cached_tokenizer_is_retrained(tmp_path):
    first = train_bpe(TRAIN_DOCS, "fp", 280, tmp_path)
    path = tmp_path / "tokenizers" / f"{first.id}.json"
    path.write_text('{"version": "1.0", "trunc', encoding="utf-8")
    again = train_bpe(TRAIN_DOCS, "fp", 280, tmp_path)
    assert again.decode(again.encode(SAMPLES[1])) == SAMPLES[1]
    assert isinstance(BPETokenizer.from_file(path), BPETokenizer)


def test_bpe_vocab_too_small(tmp_path):
    with pytest.raises(DataError, match="vocab_size=100.*at least 257.*'byte'"):
        train_bpe(TRAIN_DOCS, "fp", 100, tmp_path)
