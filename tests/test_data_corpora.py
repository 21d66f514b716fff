"""Corpus specs: built-ins, local files, Hugging Face datasets, and the errors for bad input."""

import importlib.util
import json
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from muonlab.data import DataError, load_corpus


def _kjv_verses() -> list[dict]:
    folder = next(iter(importlib.util.find_spec("bible").submodule_search_locations))
    with open(Path(folder) / "data" / "kjv.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_english_is_the_kjv_one_document_per_chapter():
    corpus = load_corpus("english")
    verses = _kjv_verses()
    assert len(corpus.documents) == len({(v["book"], v["chapter"]) for v in verses}) == 1189
    assert corpus.documents[0].startswith("Genesis 1")
    assert "In the beginning God created the heaven and the earth." in corpus.documents[0]
    assert verses[-1]["text"] in corpus.documents[-1]
    assert load_corpus("kjv").fingerprint == corpus.fingerprint


def test_python_corpus_is_stdlib_sources_capped_and_sorted():
    corpus = load_corpus("python", max_bytes=200_000)
    assert 0 < corpus.n_bytes <= 200_000
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    first = sorted(p for p in stdlib.glob("*.py"))[0].read_text(encoding="utf-8")
    assert corpus.documents[0] == first
    assert load_corpus("python", max_bytes=200_000).fingerprint == corpus.fingerprint


def test_txt_jsonl_glob_and_directory(tmp_path):
    (tmp_path / "a.txt").write_text("alpha document\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("   \n", encoding="utf-8")  # empty documents are dropped
    (tmp_path / "sub").mkdir()
    lines = [{"text": "first line"}, {"text": "second \u2028 line", "id": 7}]
    (tmp_path / "sub" / "c.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n\n", encoding="utf-8"
    )
    assert load_corpus(str(tmp_path / "a.txt")).documents == ["alpha document\n"]
    assert load_corpus(str(tmp_path / "sub" / "c.jsonl")).documents == ["first line", "second \u2028 line"]
    assert load_corpus(str(tmp_path / "*.txt")).documents == ["alpha document\n"]
    assert load_corpus(str(tmp_path)).documents == ["alpha document\n", "first line", "second \u2028 line"]
    assert load_corpus(str(tmp_path / "**" / "*.jsonl")).documents == ["first line", "second \u2028 line"]


def test_max_bytes_keeps_whole_leading_documents(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["aaaa", "bbbb", "cccc"]), encoding="utf-8")
    assert load_corpus(str(path), max_bytes=9).documents == ["aaaa", "bbbb"]


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one", encoding="utf-8")
    before = load_corpus(str(path)).fingerprint
    path.write_text("two", encoding="utf-8")
    assert load_corpus(str(path)).fingerprint != before


def test_hf_dataset_through_the_datasets_package(monkeypatch):
    calls = []

    class FakeDataset(list):
        column_names = ["text", "label"]

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset([{"text": "hello", "label": 0}, {"text": "", "label": 1}, {"text": "world", "label": 1}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_corpus("hf:someone/stories").documents == ["hello", "world"]
    load_corpus("hf:wikitext:wikitext-2-raw-v1:validation")
    assert calls == [("someone/stories", None, "train"), ("wikitext", "wikitext-2-raw-v1", "validation")]


@pytest.mark.parametrize(
    "make_spec, expected",
    [
        (lambda d: "shakespeare", ["'shakespeare'", "english", "python", ".jsonl", "hf:NAME"]),
        (lambda d: str(d / "missing.txt"), ["missing.txt", "does not exist"]),
        (lambda d: str(d / "nothing*.jsonl"), ["nothing*.jsonl", "matched no files"]),
        (lambda d: str(d / "empty"), ["empty", "contains no"]),
    ],
)
def test_bad_specs_name_the_input_and_the_valid_choices(tmp_path, make_spec, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_corpus(make_spec(tmp_path))
    for fragment in expected:
        assert fragment in str(err.value)


def test_bad_files(tmp_path):
    cases = {
        "notext.jsonl": ('{"text": "ok"}\n\n{"body": "no text"}\n', ["line 3", "notext.jsonl", '"text"']),
        "broken.jsonl": ('{"text": "ok"}\n{"text": \n', ["line 2", "broken.jsonl", "not valid JSON"]),
        "table.csv": ("text\nhello\n", ["table.csv", ".csv", ".txt, .jsonl, .parquet"]),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(DataError) as err:
            load_corpus(str(tmp_path / name))
        for fragment in expected:
            assert fragment in str(err.value), (name, str(err.value))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt.*not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))


def test_empty_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": ""}\n{"text": "  "}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty document"):
        load_corpus(str(tmp_path))


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="data.parquet.*pip install pyarrow"):
        load_corpus(str(tmp_path / "data.parquet"))


def test_parquet_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"], "n": [1, 2]}), tmp_path / "t.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    assert load_corpus(str(tmp_path / "t.parquet")).documents == ["one", "two"]
    with pytest.raises(DataError, match="no 'text' column"):
        load_corpus(str(tmp_path / "bad.parquet"))


def test_hf_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the Hugging Face datasets package.*pip install datasets"):
        load_corpus("hf:wikitext")

    def offline(name, config, split):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError) as err:
        load_corpus("hf:wikitext")
    assert "'wikitext'" in str(err.value) and "Couldn't reach" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="hf:NAME:SPLIT"):
        load_corpus("hf:a:b:c:d")
