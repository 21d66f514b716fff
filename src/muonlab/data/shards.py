"""Train/validation split and tokenized shards on disk.

A shard folder holds ``train.bin`` and ``val.bin`` — the token ids of every document of the split,
each document followed by the end-of-text token, as a flat array of ``uint16`` (when every id fits,
i.e. ``vocab_size <= 65536``) or ``uint32`` — and ``meta.json``, which records the dtype, token and
document counts, tokenizer id and corpus fingerprint. Files are written atomically and
``meta.json`` last, so a folder with a ``meta.json`` whose counts match the files' sizes is
complete; :func:`open_shards` checks exactly that and memory-maps the arrays read-only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import DataError
from .tokenizer import Tokenizer

SHARD_FORMAT = 1
SPLITS = ("train", "val")
_ENCODE_CHUNK = 4096  # documents per encode_batch call: bounds memory, keeps batching fast


def split_documents(documents: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split documents into (train, validation), deterministically and without overlap.

    Document ``i`` goes to validation when ``u_i < val_fraction``, where ``u_i`` in [0, 1) comes
    from SHA-256 of ``(seed, i)``: the assignment of a document never depends on the others, so
    appending documents to a corpus leaves the earlier ones where they were. Each side gets at
    least one document (the one with the smallest, resp. largest, ``u``). A corpus of a single
    document is split by position instead: the text after the first line break past the
    ``1 - val_fraction`` point becomes the validation document.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be strictly between 0 and 1 (e.g. 0.03)")
    if len(documents) == 1:
        return _split_by_position(documents[0], val_fraction)
    u = [_unit_hash(seed, i) for i in range(len(documents))]
    is_val = [x < val_fraction for x in u]
    if not any(is_val):
        is_val[min(range(len(u)), key=u.__getitem__)] = True
    if all(is_val):
        is_val[max(range(len(u)), key=u.__getitem__)] = False
    train = [doc for doc, v in zip(documents, is_val) if not v]
    val = [doc for doc, v in zip(documents, is_val) if v]
    return train, val


def _unit_hash(seed: int, index: int) -> float:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def _split_by_position(document: str, val_fraction: float) -> tuple[list[str], list[str]]:
    cut = int(len(document) * (1.0 - val_fraction))
    newline = document.find("\n", cut)
    if newline != -1:
        cut = newline + 1
    train, val = document[:cut], document[cut:]
    if not train.strip() or not val.strip():
        raise DataError(
            f"the corpus is a single document of {len(document)} characters, too short to split "
            f"into training and validation text at val_fraction={val_fraction}; give more text or "
            "several documents"
        )
    return [train], [val]


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_shards(
    directory: Path,
    tokenizer: Tokenizer,
    train_docs: Sequence[str],
    val_docs: Sequence[str],
    info: dict,
) -> None:
    """Tokenize both splits into ``directory/{train,val}.bin`` and write ``meta.json`` last.

    ``info`` (JSON-serializable: corpus name, fingerprint, split settings, ...) is stored in
    ``meta.json`` beside the counts.
    """
    directory = Path(directory)
    dtype = token_dtype(tokenizer.vocab_size)
    meta = {"format": SHARD_FORMAT, "dtype": dtype.name, "tokenizer": tokenizer.id,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, **info}
    for split, docs in zip(SPLITS, (train_docs, val_docs)):
        n_tokens = 0
        with atomic_path(directory / f"{split}.bin") as tmp, open(tmp, "wb") as f:
            for start in range(0, len(docs), _ENCODE_CHUNK):
                encoded = tokenizer.encode_batch(docs[start : start + _ENCODE_CHUNK])
                stream = itertools.chain.from_iterable(ids + [tokenizer.eot_id] for ids in encoded)
                ids = np.fromiter(stream, dtype=dtype, count=sum(len(e) + 1 for e in encoded))
                ids.tofile(f)
                n_tokens += ids.size
        meta[f"{split}_tokens"] = n_tokens
        meta[f"{split}_documents"] = len(docs)
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")


def open_shards(directory: Path) -> tuple[np.memmap, np.memmap, dict]:
    """Memory-map ``(train, val)`` from a shard folder and return them with its metadata.

    Raises :class:`DataError` when ``meta.json`` is missing or unreadable, or when a ``.bin``
    file's size differs from what ``meta.json`` records (an interrupted or damaged write).
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"token shard folder {str(directory)!r} has no readable meta.json ({e})") from e
    required = {"format", "dtype", "train_tokens", "val_tokens"}
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT or not required <= meta.keys():
        raise DataError(
            f"{str(meta_path)!r} is not a muonlab shard index of format {SHARD_FORMAT} (it needs "
            f"the keys {sorted(required)}); delete {str(directory)!r} to rebuild it"
        )
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for split in SPLITS:
        path = directory / f"{split}.bin"
        n_tokens = meta[f"{split}_tokens"]
        expected = n_tokens * dtype.itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise DataError(
                f"token shard {str(path)!r} {found} but meta.json records {n_tokens} {dtype.name} "
                f"tokens ({expected} bytes); it is corrupt or truncated, delete {str(directory)!r} "
                "to rebuild it"
            )
        arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,)))
    return arrays[0], arrays[1], meta
