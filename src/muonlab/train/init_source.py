"""What ``init_from`` names: the model a run starts from, with its tokenizer.

Two kinds of folder, told apart by their ``config.json``:

- a muonlab run folder (its ``config.json`` has a ``model_config``): the model of its latest
  checkpoint (weights only: a fresh optimizer and schedule start) and the tokenizer it trained with,
  rebuilt from its data settings (:func:`run_tokenizer`); an unfinished run is used with a warning
  naming the step it stopped at;
- a Hugging Face model folder (Llama or DeepSeek-V3, e.g. from ``muonlab export``), read by
  :func:`muonlab.integrations.hf_import.read_hf_folder` (needs transformers).

Either way the source gives ``model_config``, ``tokenizer`` and ``load_into(model)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import DataError, Tokenizer, prepare_dataset
from ..models import ModelConfig
from ..rundir import read_config
from ..rundir.checkpoint import latest_checkpoint, load_checkpoint
from ..rundir.finished import unfinished_reason

if TYPE_CHECKING:
    from ..integrations.hf_import import HFModelFolder

__all__ = ["InitFromError", "RunFolderSource", "read_init_source", "run_tokenizer"]


class InitFromError(ValueError):
    """A run folder that cannot be started from, or whose tokenizer cannot be rebuilt; the message says why."""


def run_tokenizer(record: dict[str, Any]) -> Tokenizer:
    """The tokenizer a run trained with, rebuilt from its ``config.json`` record (cached, so usually instant):
    its ``init_from`` source's tokenizer, else the one its corpus and tokenizer settings build.

    Raises ``InitFromError`` when the rebuilt tokenizer is not the one the record names (e.g. the
    corpus changed since), since another vocabulary would scramble every token.
    """
    try:
        if record.get("init_from"):
            tokenizer = read_init_source(record["init_from"]).tokenizer
        else:
            tokenizer = prepare_dataset(record["corpus"], tokenizer=record["tokenizer"],
                                        vocab_size=record["vocab_size"], val_fraction=record["val_fraction"]).tokenizer
    except (DataError, KeyError, FileNotFoundError) as err:
        raise InitFromError(f"the run's tokenizer cannot be rebuilt ({err})") from None
    if f"tokenizer {tokenizer.id} " not in str(record.get("dataset", "")):
        raise InitFromError(f"the tokenizer rebuilt from the run's data settings ({tokenizer.id}) is not the one the "
                            "run trained with (its config.json names another); has the corpus changed since?")
    return tokenizer


@dataclass
class RunFolderSource:
    """A muonlab run folder to start from: its model config, tokenizer and latest checkpoint."""

    path: Path
    model_config: ModelConfig
    tokenizer: Tokenizer
    checkpoint: Path

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the checkpoint's weights into ``model``, a ``Transformer(self.model_config)`` (no optimizer state)."""
        load_checkpoint(self.checkpoint, model, None, restore_rng=False)


def _run_folder_source(path: Path, record: dict[str, Any], seq_len: int | None) -> RunFolderSource:
    config = ModelConfig.from_dict(record["model_config"])
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise InitFromError(f"run folder {path} has no complete checkpoint to start from yet")
    if seq_len is not None and seq_len > config.max_seq_len:
        raise InitFromError(f"seq_len={seq_len} exceeds the max_seq_len={config.max_seq_len} of the model in {path}; "
                            f"use seq_len <= {config.max_seq_len}")
    unfinished = unfinished_reason(path)
    if unfinished is not None:  # a legitimate start (an intermediate checkpoint), but never a silent one
        warnings.warn(f"init_from: {unfinished}; starting from its checkpoint {checkpoint.name}", stacklevel=3)
    return RunFolderSource(path, config, run_tokenizer(record), checkpoint)


def read_init_source(path: str | Path, seq_len: int | None = None) -> RunFolderSource | HFModelFolder:
    """The model folder ``path`` (for sequences of ``seq_len`` tokens) as a source to start from: a
    :class:`RunFolderSource` or a :class:`~muonlab.integrations.hf_import.HFModelFolder`.

    Raises ``InitFromError`` / ``HFFormatError`` (both ``ValueError``) in one sentence saying why it cannot be used.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InitFromError(f"init_from {path} is neither a muonlab run folder nor a Hugging Face model folder: it "
                            "has no config.json")
    try:
        record = read_config(path)
    except (FileNotFoundError, ValueError):
        record = {}  # not a run folder: the Hugging Face reader says what the folder lacks
    if "model_config" in record:
        return _run_folder_source(path, record, seq_len)
    from ..integrations.hf_import import read_hf_folder

    return read_hf_folder(path, seq_len)
