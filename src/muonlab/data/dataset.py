"""One call from a corpus spec to memory-mapped train/validation token arrays: :func:`prepare_dataset`.

Steps: load the corpus -> split its documents into train/validation -> get the tokenizer (train
BPE on the training documents, or reuse the cached one) -> tokenize both splits into shards (or
reuse the cached ones) -> memory-map them. Everything is cached under ``cache_dir``
(``$MUONLAB_CACHE``, else ``~/.cache/muonlab``)::

    tokenizers/bpe-<vocab>-<hash>.json        trained tokenizers
    datasets/<corpus>-<tokenizer>-<hash>/     train.bin, val.bin, meta.json

with every name derived from a hash of what determines its content, so a repeated call only
re-reads the corpus to fingerprint it and then opens the cached files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpora import load_corpus
from .errors import DataError
from .loader import val_batches
from .shards import SHARD_FORMAT, open_shards, split_documents, write_shards
from .tokenizer import TOKENIZER_KINDS, ByteTokenizer, Tokenizer, train_bpe


def default_cache_dir() -> Path:
    """``$MUONLAB_CACHE`` if set, else ``~/.cache/muonlab``."""
    return Path(os.environ.get("MUONLAB_CACHE") or Path.home() / ".cache" / "muonlab")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A tokenized corpus, ready for :class:`~muonlab.data.TokenLoader` and :func:`val_batches`.

    ``train_tokens`` / ``val_tokens`` are read-only 1-D memmaps of token ids, documents separated
    by ``tokenizer.eot_id``; ``fingerprint`` is the corpus content hash; ``path`` the shard folder;
    ``meta`` the contents of its ``meta.json``.
    """

    name: str
    description: str
    tokenizer: Tokenizer
    train_tokens: np.memmap
    val_tokens: np.memmap
    fingerprint: str
    path: Path
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> str:
        """A one-paragraph summary for logs and reports."""
        m = self.meta
        return (
            f"corpus {self.name!r} ({self.description}): {m['train_documents'] + m['val_documents']:,} "
            f"documents, {m['corpus_bytes'] / 1e6:.1f} MB, fingerprint {self.fingerprint[:12]}; "
            f"tokenizer {self.tokenizer.id} (vocab {self.vocab_size:,}); "
            f"train {len(self.train_tokens):,} tokens in {m['train_documents']:,} documents, "
            f"val {len(self.val_tokens):,} tokens in {m['val_documents']:,} documents "
            f"(val_fraction={m['val_fraction']}, split seed {m['split_seed']}); {m['dtype']} shards in {self.path}"
        )

    def val_batches(self, batch_size: int, seq_len: int, max_batches: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches (:func:`~muonlab.data.val_batches` of ``val_tokens``)."""
        return val_batches(self.val_tokens, batch_size, seq_len, max_batches)


def prepare_dataset(
    corpus: str = "english",
    tokenizer: str | Tokenizer = "bpe",
    vocab_size: int = 4096,
    val_fraction: float = 0.03,
    cache_dir: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    max_bytes: int | None = None,
) -> Dataset:
    """Load, split, tokenize and cache ``corpus``; return memory-mapped train/validation tokens.

    Args:
        corpus: a corpus spec: ``"english"`` (alias ``"kjv"``), ``"python"``, a .txt/.jsonl/.parquet
            file, directory or glob, or ``"hf:NAME[:SPLIT]"`` (see :mod:`muonlab.data.corpora`).
        tokenizer: ``"bpe"`` (byte-level BPE trained on the training documents), ``"byte"``, or a ready
            tokenizer (e.g. a model folder's, for ``--init_from``), cached by its ``id``.
        vocab_size: the BPE vocabulary size (at least 257); ignored for ``"byte"`` (always 257).
        val_fraction: the expected share of documents held out for validation (at least one is).
        cache_dir: where tokenizers and shards are cached; default :func:`default_cache_dir`.
        split_seed: seeds which documents go to validation.
        max_bytes: keep only the first documents up to this many UTF-8 bytes (``None``: all, except
            ``"python"`` which defaults to 12 MB).

    Raises :class:`DataError` with one sentence naming the bad input.
    """
    if isinstance(tokenizer, str) and tokenizer not in TOKENIZER_KINDS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; valid tokenizers are {', '.join(TOKENIZER_KINDS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = load_corpus(corpus, max_bytes=max_bytes)
    train_docs, val_docs = split_documents(source.documents, val_fraction, split_seed)
    split = {"fingerprint": source.fingerprint, "val_fraction": val_fraction, "split_seed": split_seed}
    if not isinstance(tokenizer, str):
        tok: Tokenizer = tokenizer
    elif tokenizer == "bpe":
        train_fingerprint = _hash({**split, "part": "train"})
        tok = train_bpe(train_docs, train_fingerprint, vocab_size, cache)
    else:
        tok = ByteTokenizer()
    key = _hash({**split, "tokenizer": tok.id, "format": SHARD_FORMAT})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name).strip("._")[-40:] or "corpus"
    kind = tokenizer if isinstance(tokenizer, str) else "given"
    directory = cache / "datasets" / f"{slug}-{kind}-{key[:16]}"
    try:
        train, val, meta = open_shards(directory)
        if meta.get("fingerprint") != source.fingerprint or meta.get("tokenizer") != tok.id:
            raise DataError(f"{directory} holds shards of another corpus or tokenizer")
    except DataError as e:
        if (directory / "meta.json").exists():
            warnings.warn(f"rebuilding the token shards in {directory}: {e}", stacklevel=2)
        info = {"corpus": source.name, "description": source.description, "corpus_bytes": source.n_bytes, **split}
        write_shards(directory, tok, train_docs, val_docs, info)
        train, val, meta = open_shards(directory)
    return Dataset(
        name=source.name,
        description=source.description,
        tokenizer=tok,
        train_tokens=train,
        val_tokens=val,
        fingerprint=source.fingerprint,
        path=directory,
        meta=meta,
    )


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
