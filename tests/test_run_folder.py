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


def test_the_command_refuses_a_finished_run_with_another_config_before_importing_torch(tiny_config):
    """``muonlab train`` into a folder holding another run fails in a fresh process without importing
    torch (so in well under 2 s on any machine), with exit code 2 and the field named."""
    import json
    import subprocess
    import sys

    from muonlab.train.loop import train

    config = tiny_config(train_tokens=32 * 4 * 2, log_every=1, eval_every=2)
    train(config)
    args = ["train", "--corpus", config.corpus, "--tokenizer", "byte", "--model", "tiny", "--seq_len", "32",
            "--batch_size", "4", "--train_tokens", str(config.train_tokens), "--run_dir", config.run_dir,
            "--device", "cpu", "--lr", "0.05"]
    probe = ("import json, sys; from muonlab.cli import main; rc = main(sys.argv[1:]); "
             "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"rc": 2, "torch": False}, done.stderr
    assert "lr is 0.003 there but 0.05 now" in done.stderr and config.run_dir in done.stderr
