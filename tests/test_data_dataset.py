"""Document split, token shards and prepare_dataset: hygiene, caching, corruption."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import muonlab.data.dataset as dataset_module
from muonlab.data import EOT_TOKEN, DataError, open_shards, prepare_dataset, split_documents
from muonlab.data.shards import token_dtype


def _write_corpus(folder: Path, n_docs: int = 60) -> list[str]:
    docs = [f"Document number {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(40)) for i in range(n_docs)]
    docs[3] = "unicode ünïcødé 日本語 😀 document"
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    return docs


def _decoded_documents(dataset, tokens) -> list[str]:
    text = dataset.tokenizer.decode(np.asarray(tokens).tolist())
    assert text.endswith(EOT_TOKEN)  # every document, the last included, is followed by EOT
    return text.split(EOT_TOKEN)[:-1]


def test_split_is_deterministic_disjoint_and_complete():
    docs = [f"doc {i}" for i in range(2000)]
    train, val = split_documents(docs, 0.1, seed=0)
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert 150 <= len(val) <= 250
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    assert split_documents(docs, 0.1, seed=1)[1] != val
    # a document's side does not depend on the documents after it
    assert set(split_documents(docs[:1000], 0.1, seed=0)[1]) == set(val) & set(docs[:1000])


def test_split_keeps_one_document_on_each_side():
    train, val = split_documents(["a", "b", "c"], 1e-9)
    assert len(val) == 1 and len(train) == 2
    train, val = split_documents(["a", "b", "c"], 1 - 1e-9)
    assert len(train) == 1 and len(val) == 2


def test_single_document_is_split_by_position_at_a_line_break():
    doc = "".join(f"line {i}\n" for i in range(100))
    [train], [val] = split_documents([doc], 0.1)
    assert train + val == doc and train.endswith("\n")
    assert 0.85 * len(doc) < len(train) < 0.95 * len(doc)
    with pytest.raises(DataError, match="single document"):
        split_documents(["x"], 0.1)


def test_bad_val_fraction_and_tokenizer(tmp_path):
    with pytest.raises(DataError, match="val_fraction=1.5 must be strictly between 0 and 1"):
        split_documents(["a", "b"], 1.5)
    with pytest.raises(DataError, match="unknown tokenizer 'sentencepiece'.*bpe, byte"):
        prepare_dataset("english", tokenizer="sentencepiece", cache_dir=tmp_path)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_no_validation_document_in_training(tmp_path, tokenizer):
    docs = _write_corpus(tmp_path)
    data = prepare_dataset(str(tmp_path / "corpus.jsonl"), tokenizer, vocab_size=320, val_fraction=0.1,
                           cache_dir=tmp_path / "cache")
    train_docs = _decoded_documents(data, data.train_tokens)
    val_docs = _decoded_documents(data, data.val_tokens)
    assert val_docs and not set(val_docs) & set(train_docs)
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert data.train_tokens.dtype == np.uint16 and data.meta["dtype"] == "uint16"
    assert data.meta["train_tokens"] == len(data.train_tokens)
    assert data.meta["val_documents"] == len(val_docs)
    assert data.vocab_size == data.tokenizer.vocab_size
    assert str(tmp_path / "corpus.jsonl") in data.describe()


def test_token_dtype_widens_past_16_bits():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_second_call_is_cached(tmp_path, monkeypatch):
    _write_corpus(tmp_path)
    spec, cache = str(tmp_path / "corpus.jsonl"), tmp_path / "cache"
    first = prepare_dataset(spec, "bpe", vocab_size=300, cache_dir=cache)
    mtime = (first.path / "train.bin").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("shards should have come from the cache")

    monkeypatch.setattr(dataset_module, "write_shards", no_rebuild)
    second = prepare_dataset(spec, "bpe", vocab_size=300, cache_dir=cache)
    assert (second.path / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(second.train_tokens, first.train_tokens)
    assert second.tokenizer.id == first.tokenizer.id
    with pytest.raises(AssertionError, match="cache"):  # a different split is a different dataset
        prepare_dataset(spec, "bpe", vocab_size=300, val_fraction=0.2, cache_dir=cache)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    _write_corpus(tmp_path)
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "envcache"))
    data = prepare_dataset(str(tmp_path / "corpus.jsonl"), "byte")
    assert Path(data.path).parent.parent == tmp_path / "envcache"


def test_truncated_shard_is_detected_and_rebuilt(tmp_path):
    _write_corpus(tmp_path)
    spec, cache = str(tmp_path / "corpus.jsonl"), tmp_path / "cache"
    data = prepare_dataset(spec, "byte", cache_dir=cache)
    expected = np.array(data.train_tokens)
    train_bin = data.path / "train.bin"
    del data
    with open(train_bin, "r+b") as f:
        f.truncate(os.path.getsize(train_bin) - 3)
    with pytest.raises(DataError) as err:
        open_shards(train_bin.parent)
    assert "train.bin" in str(err.value) and "corrupt or truncated" in str(err.value)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = prepare_dataset(spec, "byte", cache_dir=cache)
    assert np.array_equal(rebuilt.train_tokens, expected)


def test_missing_meta_is_rebuilt_silently(tmp_path):
    _write_corpus(tmp_path)
    spec, cache = str(tmp_path / "corpus.jsonl"), tmp_path / "cache"
    data = prepare_dataset(spec, "byte", cache_dir=cache)
    (data.path / "meta.json").unlink()  # as after a crash between the shard and the meta write
    with pytest.raises(DataError, match="meta.json"):
        open_shards(data.path)
    assert len(prepare_dataset(spec, "byte", cache_dir=cache).val_tokens) == len(data.val_tokens)


def test_english_split_covers_every_kjv_verse_once(tmp_path):
    data = prepare_dataset("english", "byte", cache_dir=tmp_path)
    train_docs = _decoded_documents(data, data.train_tokens)
    val_docs = _decoded_documents(data, data.val_tokens)
    folder = next(iter(importlib.util.find_spec("bible").submodule_search_locations))
    with open(Path(folder) / "data" / "kjv.jsonl", encoding="utf-8") as f:
        verses = [json.loads(line) for line in f]
    chapters = {(v["book"], v["chapter"]) for v in verses}
    assert len(train_docs) + len(val_docs) == len(chapters)
    assert 0.01 * len(chapters) <= len(val_docs) <= 0.06 * len(chapters)
    by_heading = {}
    for side, docs in (("train", train_docs), ("val", val_docs)):
        for doc in docs:
            heading, _, body = doc.partition("\n\n")
            assert heading not in by_heading, f"{heading} is in both splits or twice"
            by_heading[heading] = (side, body.split("\n"))
    for v in verses:  # every verse, in its chapter, in order, on exactly one side
        _, lines = by_heading[f"{v['book']} {v['chapter']}"]
        assert lines[v["verse"] - 1] == v["text"], v["citation"]


def test_english_bpe_small(tmp_path):
    data = prepare_dataset("english", "bpe", vocab_size=512, cache_dir=tmp_path, max_bytes=300_000)
    assert data.vocab_size == 512
    first = _decoded_documents(data, data.train_tokens)[0]
    assert first.startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.\n")
    assert len(data.train_tokens) < 0.6 * 300_000  # merges compress English well below a byte per token
