"""Shared fixtures: a tiny on-disk corpus, an isolated data cache, and tiny training configs.

Training tests use ``tiny_config`` (model "tiny", byte tokenizer, seq_len 32, batch 4) so a whole
run takes well under a second on the 2-core CPU. ``muonlab_cache`` points ``MUONLAB_CACHE`` at a
session-wide temporary folder so tests never touch ``~/.cache/muonlab`` and the token shards of
the tiny corpus are built once.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

_WORDS = (
    "the of and to in that is was he for it with as his on be at by this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because each "
    "just those people"
).split()


def write_tiny_corpus(directory: Path, n_docs: int = 60, words_per_doc: int = 110, seed: int = 0) -> Path:
    """``n_docs`` deterministic .txt documents of pseudo-English (about 36 KB in all)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n_docs):
        lines = []
        for _ in range(words_per_doc // 11):
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(11)).capitalize() + ".")
        (directory / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A folder of small .txt documents, usable as ``TrainConfig.corpus``."""
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny-corpus"))


@pytest.fixture(scope="session")
def muonlab_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("muonlab-cache")


@pytest.fixture
def muonlab_cache(monkeypatch, muonlab_cache_dir) -> Path:
    """Set ``MUONLAB_CACHE`` to a session-wide temporary folder for this test."""
    monkeypatch.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
    return muonlab_cache_dir


@pytest.fixture
def single_thread():
    """Run torch on one thread for this test (restored afterwards).

    The tiny models gain nothing from a second thread, and on the shared 2-core machine a busy
    neighbour makes OpenMP's thread hand-offs cost up to 10x: one thread keeps training tests fast
    and their timing stable.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_STEPS = 20


def tiny_config_dict(corpus: Path, run_dir: Path, /, **overrides) -> dict:
    """The keys of a tiny, fast, CPU-only training run (``TINY_STEPS`` steps by default)."""
    values = dict(
        run_dir=str(run_dir), corpus=str(corpus), tokenizer="byte", model="tiny",
        seq_len=32, batch_size=4, train_tokens=32 * 4 * TINY_STEPS,
        warmup_steps=2, eval_every=5, eval_batches=2, log_every=5, telemetry_every=5,
        progress=False, device="cpu", dtype="fp32",
    )  # fmt: skip
    values.update(overrides)
    return values


@pytest.fixture
def tiny_config(tiny_corpus, muonlab_cache, tmp_path):
    """``tiny_config(name="run", **overrides) -> TrainConfig`` with run_dir ``tmp_path / name``."""
    from muonlab.train.config import TrainConfig

    def make(name: str = "run", **overrides):
        return TrainConfig(**tiny_config_dict(tiny_corpus, tmp_path / name, **overrides))

    return make


def assert_identical(a, b, where: str = "") -> None:
    """Recursive bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def interrupt_after_checkpoint(monkeypatch, at_step: int):
    """Make the loop stop (as on Ctrl-C) right after the checkpoint of ``at_step`` is written.

    Returns the real ``save_checkpoint`` so the caller can put it back.
    """
    from muonlab.train import loop

    real_save = loop.save_checkpoint

    def save_then_stop(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == at_step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    return real_save
