"""``--corpus hf:PATH``: a local dataset saved with ``datasets``' ``save_to_disk`` (nothing downloaded)."""

import pytest

from muonlab.data import DataError, load_corpus, prepare_dataset

datasets = pytest.importorskip("datasets")

TEXTS = ["first document", "  ", "second document\nwith two lines", "third"]


@pytest.fixture
def saved(tmp_path):
    one = tmp_path / "one"
    datasets.Dataset.from_dict({"text": TEXTS, "id": list(range(4))}).save_to_disk(str(one))
    both = tmp_path / "both"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": TEXTS}),
        "validation": datasets.Dataset.from_dict({"text": ["held out"]}),
    }).save_to_disk(str(both))
    return one, both


def test_a_saved_dataset_and_the_splits_of_a_saved_dataset_dict(saved):
    one, both = saved
    kept = [t for t in TEXTS if t.strip()]
    assert load_corpus(f"hf:{one}").documents == kept
    assert load_corpus(f"hf:{both}").documents == kept  # the split defaults to train
    assert load_corpus(f"hf:{both}:validation").documents == ["held out"]


def test_prepare_dataset_tokenizes_a_saved_dataset(saved, tmp_path):
    data = prepare_dataset(f"hf:{saved[0]}", tokenizer="byte", val_fraction=0.3, cache_dir=tmp_path / "cache")
    assert len(data.train_tokens) + len(data.val_tokens) == sum(len(t.encode()) + 1 for t in TEXTS if t.strip())


def test_bad_saved_datasets_say_what_is_wrong(saved, tmp_path):
    one, both = saved
    with pytest.raises(DataError, match=r"has no split 'test'; its splits are \['train', 'validation'\]"):
        load_corpus(f"hf:{both}:test")
    with pytest.raises(DataError, match=r"is one dataset without splits; name it as hf:.*one \(without :train\)"):
        load_corpus(f"hf:{one}:train")
    with pytest.raises(DataError, match="is a local folder, which has no configs"):
        load_corpus(f"hf:{one}:default:train")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match=r"folder '.*plain' is not a dataset saved with datasets' save_to_disk"):
        load_corpus(f"hf:{tmp_path / 'plain'}")
    no_text = tmp_path / "no_text"
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(no_text))
    with pytest.raises(DataError, match=r"has no 'text' column \(its columns are \['body'\]\)"):
        load_corpus(f"hf:{no_text}")
    assert (tmp_path / "plain" / "notes.txt").read_text() == "not a dataset"  # nothing was touched
