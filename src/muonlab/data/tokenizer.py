"""Tokenizers: text <-> integer ids.

Two kinds, with one interface (``id``, ``vocab_size``, ``eot_id``, ``encode``, ``encode_batch``,
``encode_with_offsets``, ``decode``):

- :class:`ByteTokenizer`: the UTF-8 bytes of the text (ids 0..255) plus an end-of-text token
  (id 256), so ``vocab_size == 257``. Needs no training and handles any text.
- :class:`BPETokenizer`: GPT-2-style byte-level BPE trained with Hugging Face ``tokenizers`` on the
  training documents (:func:`train_bpe`); the end-of-text token is id 0. Byte-level means every
  string round-trips, whatever its script. Trained tokenizers are cached on disk, keyed by a hash
  of (documents' fingerprint, vocab size, trainer settings), so the same request never retrains.

The end-of-text token separates documents in token streams. ``encode`` never produces it, even for
text that contains the literal string ``"<|endoftext|>"``; ``decode`` renders it as that string.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .atomic import atomic_write_text
from .errors import DataError

EOT_TOKEN = "<|endoftext|>"
TOKENIZER_KINDS = ("bpe", "byte")
# Everything that changes what the BPE trainer produces; part of the cache key.
BPE_SETTINGS = {"version": 1, "pre_tokenizer": "byte_level", "min_frequency": 2, "eot": EOT_TOKEN}


class Tokenizer(Protocol):
    """What the rest of muonlab needs from a tokenizer."""

    id: str  # identifies the exact vocabulary, e.g. "byte" or "bpe-4096-<hash>"
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode(text)`` and, per id, the characters ``[start, end)`` of ``text`` it covers."""
        ...

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """``encode_with_offsets`` of each text (in one call, so a Rust tokenizer can use its threads)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and the end-of-text token as id 256."""

    id = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Each byte covers the character it is part of."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for i, char in enumerate(text):
            encoded = char.encode("utf-8")
            ids += encoded
            offsets += [(i, i + 1)] * len(encoded)
        return ids, offsets

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        return [self.encode_with_offsets(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        pieces: list[list[int]] = [[]]
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                pieces.append([])
            elif 0 <= i < 256:
                pieces[-1].append(i)
            else:
                raise DataError(f"token id {i} is outside the byte tokenizer's range 0..{self.eot_id}")
        # errors="replace": a window cut mid-character still decodes (to U+FFFD for the stub).
        return EOT_TOKEN.join(bytes(p).decode("utf-8", errors="replace") for p in pieces)


class WrappedTokenizer:
    """The muonlab tokenizer interface over a ``tokenizers.Tokenizer`` held as ``self._tok`` (special
    tokens are never added, and text never encodes to them: ``encode_special_tokens`` is set)."""

    _tok: HFTokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        return [(e.ids, e.offsets) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class BPETokenizer(WrappedTokenizer):
    """A trained byte-level BPE tokenizer (a thin wrapper over ``tokenizers.Tokenizer``)."""

    def __init__(self, hf_tokenizer: HFTokenizer, id: str):
        eot_id = hf_tokenizer.token_to_id(EOT_TOKEN)
        if eot_id is None:
            raise DataError(f"tokenizer {id!r} has no {EOT_TOKEN} token; it was not made by train_bpe")
        # Text that happens to contain "<|endoftext|>" is encoded as plain text, never as EOT.
        hf_tokenizer.encode_special_tokens = True
        self._tok = hf_tokenizer
        self.id = id
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eot_id = eot_id

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a tokenizer saved by :meth:`save` (its id is the file name without ``.json``)."""
        path = Path(path)
        try:
            hf_tokenizer = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
            raise DataError(f"tokenizer file {str(path)!r} cannot be loaded ({e})") from e
        return cls(hf_tokenizer, id=path.stem)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, atomically (temporary name, then rename)."""
        atomic_write_text(Path(path), self._tok.to_str())



def train_bpe(documents: Sequence[str], fingerprint: str, vocab_size: int, cache_dir: Path) -> BPETokenizer:
    """A byte-level BPE tokenizer with at most ``vocab_size`` tokens, trained on ``documents``.

    ``fingerprint`` must identify ``documents`` (e.g. :attr:`Corpus.fingerprint`); the result is
    cached as ``cache_dir/tokenizers/<id>.json`` and reused on the next call with the same
    fingerprint, vocab size and :data:`BPE_SETTINGS`. A small corpus may yield fewer tokens than
    asked for; ``vocab_size`` of the result is the real size.
    """
    if vocab_size < 257:
        raise DataError(
            f"BPE vocab_size={vocab_size} is too small; it needs at least 257 (256 bytes plus "
            "the end-of-text token); use tokenizer='byte' for a 257-token vocabulary"
        )
    key_source = json.dumps({"fingerprint": fingerprint, "vocab_size": vocab_size, **BPE_SETTINGS}, sort_keys=True)
    tokenizer_id = f"bpe-{vocab_size}-{hashlib.sha256(key_source.encode()).hexdigest()[:16]}"
    path = Path(cache_dir) / "tokenizers" / f"{tokenizer_id}.json"
    if path.is_file():
        try:
            return BPETokenizer.from_file(path)
        except DataError:
            pass  # a damaged cache file is simply retrained and replaced below
    tokenizer = BPETokenizer(_train_bpe_model(documents, vocab_size), id=tokenizer_id)
    tokenizer.save(path)
    return tokenizer


def _train_bpe_model(documents: Sequence[str], vocab_size: int) -> HFTokenizer:
    hf_tokenizer = HFTokenizer(models.BPE())
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=BPE_SETTINGS["min_frequency"],
        special_tokens=[EOT_TOKEN],  # first, so the end-of-text id is 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    hf_tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return hf_tokenizer
