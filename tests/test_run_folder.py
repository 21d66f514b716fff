"""The run-folder decision's config comparison: which saved fields must match on resume."""

from muonlab.train.config import TrainConfig
from muonlab.train.run_folder import first_config_difference

from conftest import tiny_config_dict


def test_a_field_the_saved_run_lacks_counts_as_its_default(tmp_path):
    config = TrainConfig(**tiny_config_dict(tmp_path / "corpus.txt", tmp_path / "run"))
    record = config.to_dict()
    del record["weight_decay"]  # a run folder written before this field existed
    assert first_config_difference(record, config) is None
    changed = TrainConfig(**tiny_config_dict(tmp_path / "corpus.txt", tmp_path / "run", weight_decay=0.3))
    assert first_config_difference(record, changed) == "weight_decay is absent there (so 0.1) but 0.3 now"


def test_the_first_differing_field_is_named_and_resume_settings_may_change(tmp_path):
    config = TrainConfig(**tiny_config_dict(tmp_path / "corpus.txt", tmp_path / "run"))
    record = {**config.to_dict(), "lr": 1.0, "threads": 7, "progress": True}
    assert first_config_difference(record, config) == f"lr is 1.0 there but {config.lr!r} now"
    record["lr"] = config.lr
    assert first_config_difference(record, config) is None
