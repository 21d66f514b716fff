"""``muonlab.load_run(path)``: a trained run's model and tokenizer, ready to use in Python.

    run = muonlab.load_run("runs/my-run")
    ids = torch.tensor([run.tokenizer.encode("In the beginning")])
    logits = run.model(ids)                       # [1, T, vocab]

``path`` is a muonlab run folder (its latest complete checkpoint, with the tokenizer it trained
with) or a Hugging Face model folder that ``muonlab train --init_from`` accepts (e.g. one written by
``muonlab export``; reading it needs transformers). The model is a :class:`muonlab.models.Transformer`
in eval mode on ``device``, with the weights in fp32 as trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Tokenizer
from .models import Transformer
from .rundir import read_config
from .train.init_source import RunFolderSource, read_init_source

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """What :func:`load_run` returns."""

    model: Transformer
    tokenizer: Tokenizer
    record: dict[str, Any]
    """The run folder's ``config.json`` (the resolved config, model counts, data, command); empty for a
    Hugging Face folder."""
    checkpoint: Path | None
    """The checkpoint the weights came from (None for a Hugging Face folder)."""


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedRun:
    """The model and tokenizer of the run folder (or Hugging Face model folder) ``path``.

    Raises ``ValueError`` in one sentence when ``path`` is neither, has no complete checkpoint yet,
    or its tokenizer cannot be rebuilt (e.g. the corpus it was trained on has changed).
    """
    source = read_init_source(path)
    model = Transformer(source.model_config)
    source.load_into(model)
    if isinstance(source, RunFolderSource):
        return LoadedRun(model.to(device).eval(), source.tokenizer, read_config(source.path), source.checkpoint)
    return LoadedRun(model.to(device).eval(), source.tokenizer, {}, None)
