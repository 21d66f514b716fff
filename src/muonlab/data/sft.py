"""Supervised fine-tuning data: conversations, tokenized with the chat template, packed into windows,
with the loss on the responses only. One call: :func:`prepare_sft`.

Sources (the ``corpus`` of a ``task="sft"`` run):

- ``"python-functions"``, built in: standard-library signature + docstring → body (:mod:`.python_functions`);
- a ``.jsonl`` file, one JSON object per line, either ``{"prompt": "...", "response": "..."}`` (with an
  optional ``"system": "..."``) or ``{"messages": [{"role": ..., "content": ...}, ...]}``
  (:mod:`.chat`). A bad row stops the run with one sentence naming the file and line.

Tokens: a conversation is rendered by :func:`.chat.render_chat`, encoded whole (so its ids are those
of the same text encoded by a Hugging Face tokenizer with the exported chat template), and followed
by the end-of-text id. A token is *trained* when it overlaps a trained character (Hugging Face's
rule for assistant masks); the end-of-text id is trained when the conversation ends with an
assistant message, so the model learns to stop; the first token never is (nothing of its
conversation precedes it).

Split: a conversation goes to validation when ``u < val_fraction``, with ``u`` in [0, 1) from
SHA-256 of its non-assistant messages, so identical prompts share a split; each side gets at least one.

Packing (next-fit, in order): conversations fill rows of ``seq_len`` tokens; one that does not fit
in the rest of the row starts the next row; one longer than ``seq_len`` is cut to its first
``seq_len`` tokens (and dropped when nothing trained is left); the rest of a row is end-of-text
padding without loss. The rows, end to end plus one padding token, are a token stream with a label
stream (the token where trained, else ``IGNORE_INDEX``), which :class:`~muonlab.data.TokenLoader` and
:func:`~muonlab.data.val_batches` cut back into rows: row ``r`` is the input of window ``r`` and its
targets are the labels of the next ``seq_len`` positions, the last being the next row's first token,
which carries no loss. So no target is predicted across two conversations.

Attention is plain causal over the row: a conversation can attend to the ones packed before it in
its row (as pretraining attends across documents; positions run on across the row), with the
end-of-text id between them. The loss mask, not the attention, keeps conversations apart.

The packed splits are cached under ``<cache>/sft/``, keyed by the conversations, the tokenizer,
``seq_len``, ``val_fraction`` and the split seed, so the runs of a study tokenize a set once.

The training loss of a batch is its mean over the counted targets; with ``grad_accum`` > 1 or
several processes each micro-batch's mean counts equally (a mean of per-batch means), while
evaluation weights every counted target of a batch equally (:func:`muonlab.train.loop.evaluate`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .chat import check_messages, render_chat
from .dataset import default_cache_dir
from .errors import DataError
from .loader import val_batches
from .python_functions import python_function_pairs
from .tokenizer import Tokenizer

__all__ = ["IGNORE_INDEX", "SFT_BUILTIN", "PackedSplit", "SFTData", "load_conversations", "pack", "prepare_sft",
           "read_sft_jsonl", "split_conversations", "tokenize_conversation", "tokenize_conversations", "trained_tokens"]

IGNORE_INDEX = -100
"""The label of a token that carries no loss (``muonlab.models.IGNORE_INDEX``, F.cross_entropy's default)."""
SFT_BUILTIN = {"python-functions": "standard-library functions: signature + docstring → body"}
VALID_SFT_SPECS = (f"a built-in set ({', '.join(SFT_BUILTIN)}) or a .jsonl file of "
                   '{"prompt": ..., "response": ...} or {"messages": [...]} rows')

Conversation = list[dict[str, str]]


def read_sft_jsonl(path: str | os.PathLike) -> list[Conversation]:
    """The conversations of a JSONL file (see the module docstring); ``DataError`` names the first bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"fine-tuning data {str(path)!r} cannot be read as UTF-8 text ({e})") from None
    conversations = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        where = f"line {lineno} of {path}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e.msg})") from None
        conversations.append(_row_conversation(row, where))
    if not conversations:
        raise DataError(f"fine-tuning data {str(path)!r} has no rows")
    return conversations


def _row_conversation(row: object, where: str) -> Conversation:
    if isinstance(row, dict) and "messages" in row:
        return check_messages(row["messages"], where)
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise DataError(f'{where} is not a fine-tuning row; each row must be {{"prompt": "...", "response": "..."}} '
                        '(optionally with "system") or {"messages": [{"role": ..., "content": ...}, ...]}')
    if not isinstance(row.get("response"), str) or not row["response"].strip():
        raise DataError(f'{where} has no response: its "response" is missing, empty or not a string')
    if not isinstance(row.get("system", ""), str):
        raise DataError(f'{where} has a "system" that is not a string')
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def load_conversations(spec: str, cache_dir: Path) -> tuple[list[Conversation], str]:
    """The conversations named by ``spec`` and a description of them."""
    if spec in SFT_BUILTIN:
        pairs = python_function_pairs(cache_dir)
        return ([[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in pairs],
                SFT_BUILTIN[spec])
    path = Path(os.path.expanduser(spec))
    if path.suffix == ".jsonl" and path.is_file():
        return read_sft_jsonl(path), f"fine-tuning rows from {spec!r}"
    if path.suffix == ".jsonl":
        raise DataError(f"fine-tuning data {spec!r} does not exist; give {VALID_SFT_SPECS}")
    raise DataError(f"unknown fine-tuning data {spec!r}; give {VALID_SFT_SPECS}")


def trained_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Whether each token (characters ``offsets[i] = [start, end)``) overlaps a trained character span.

    ``spans`` are sorted and disjoint: token i overlaps span j = the first span ending after its
    start (``searchsorted`` on the ends) exactly when its end lies past that span's start.
    """
    if not len(offsets) or not len(spans):
        return np.zeros(len(offsets), dtype=bool)
    starts, ends = np.asarray(offsets, dtype=np.int64).reshape(-1, 2).T
    span_starts, span_ends = np.asarray(spans, dtype=np.int64).reshape(-1, 2).T
    j = np.searchsorted(span_ends, starts, side="right")
    inside = j < len(spans)
    trained = np.zeros(len(offsets), dtype=bool)
    trained[inside] = ends[inside] > span_starts[j[inside]]
    return trained


def tokenize_conversations(tokenizer: Tokenizer, conversations: Sequence[Conversation]
                           ) -> list[tuple[list[int], list[bool]]]:
    """Per conversation, its ids (its chat-template text, then end-of-text) and whether each is trained."""
    rendered = [render_chat(messages) for messages in conversations]
    encoded = tokenizer.encode_batch_with_offsets([text for text, _ in rendered])
    out = []
    for messages, (_, spans), (ids, offsets) in zip(conversations, rendered, encoded):
        trained = trained_tokens(offsets, spans)
        if len(trained):
            trained[0] = False
        out.append(([*ids, tokenizer.eot_id], [*trained.tolist(), messages[-1]["role"] == "assistant"]))
    return out


def tokenize_conversation(tokenizer: Tokenizer, messages: Conversation) -> tuple[list[int], list[bool]]:
    """``tokenize_conversations`` of one conversation."""
    return tokenize_conversations(tokenizer, [messages])[0]


@dataclass(frozen=True, eq=False)
class PackedSplit:
    """One split, packed (see the module docstring): ``tokens`` and ``labels`` of ``rows · seq_len + 1`` entries."""

    tokens: np.ndarray
    labels: np.ndarray
    seq_len: int
    conversations: int
    truncated: int
    dropped: int

    @property
    def rows(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    @property
    def trained_tokens(self) -> int:
        """Targets that carry a loss."""
        return int((self.labels != IGNORE_INDEX).sum())

    def describe(self) -> str:
        return (f"{self.conversations:,} conversations ({self.truncated:,} cut to seq_len, {self.dropped:,} dropped "
                f"with no response left) in {self.rows:,} rows of {self.seq_len} ({self.rows * self.seq_len:,} "
                f"tokens, {self.trained_tokens:,} trained)")


def pack(examples: Sequence[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> PackedSplit:
    """Pack tokenized conversations into rows of ``seq_len`` (next-fit, in order; see the module docstring)."""
    rows: list[tuple[list[int], list[bool]]] = []
    room, truncated, dropped = 0, 0, 0
    for ids, trained in examples:
        if len(ids) > seq_len:
            ids, trained = ids[:seq_len], trained[:seq_len]
            truncated += 1
            if not any(trained):
                dropped += 1
                continue
        if len(ids) > room:
            rows.append(([], []))
            room = seq_len
        rows[-1][0].extend(ids)
        rows[-1][1].extend(trained)
        room -= len(ids)
    tokens = np.full(len(rows) * seq_len + 1, pad_id, dtype=np.int32)
    labels = np.full(len(rows) * seq_len + 1, IGNORE_INDEX, dtype=np.int32)
    for r, (ids, trained) in enumerate(rows):
        row_ids = np.asarray(ids, dtype=np.int32)
        tokens[r * seq_len:r * seq_len + len(ids)] = row_ids
        labels[r * seq_len:r * seq_len + len(ids)] = np.where(trained, row_ids, IGNORE_INDEX)
    return PackedSplit(tokens, labels, seq_len, len(examples) - dropped, truncated, dropped)


def _is_val(messages: Conversation, val_fraction: float, seed: int) -> bool:
    prompt = json.dumps([m for m in messages if m["role"] != "assistant"])
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < val_fraction


def split_conversations(conversations: list[Conversation], val_fraction: float,
                        seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, validation), by the hash of each conversation's prompt (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be strictly between 0 and 1 (e.g. 0.03)")
    if len(conversations) < 2:
        raise DataError(f"fine-tuning needs at least 2 conversations (one for validation), got {len(conversations)}")
    is_val = [_is_val(m, val_fraction, seed) for m in conversations]
    if all(is_val) or not any(is_val):  # move the last one over so that each side has one
        is_val[-1] = not is_val[-1]
    return ([m for m, v in zip(conversations, is_val) if not v], [m for m, v in zip(conversations, is_val) if v])


@dataclass(frozen=True, eq=False)
class SFTData:
    """Packed fine-tuning data (see the module docstring): what a ``task="sft"`` run trains and validates on."""

    name: str
    description: str
    tokenizer: Tokenizer
    train: PackedSplit
    val: PackedSplit
    fingerprint: str

    @property
    def train_tokens(self) -> np.ndarray:
        """The packed training split's token ids (one epoch), like ``Dataset.train_tokens``."""
        return self.train.tokens

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> str:
        """A one-paragraph summary for logs and reports (it names the tokenizer as pretraining data does)."""
        return (f"fine-tuning data {self.name!r} ({self.description}), fingerprint {self.fingerprint[:12]}; "
                f"tokenizer {self.tokenizer.id} (vocab {self.vocab_size:,}); chat template of muonlab.data.chat; "
                f"train {self.train.describe()}; val {self.val.describe()}")

    def val_batches(self, batch_size: int, seq_len: int, max_batches: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches, targets masked to the responses."""
        return val_batches(self.val.tokens, batch_size, seq_len, max_batches, labels=self.val.labels)


PACK_VERSION = 1
"""Bumped whenever tokenizing or packing changes, so packed splits cached by older code are not reused."""
_SPLIT_FIELDS = ("conversations", "truncated", "dropped")


def _write_packed(path: Path, splits: Sequence[PackedSplit]) -> None:
    """Both splits in one ``.npz`` (written atomically: concurrent runs may prepare the same data)."""
    arrays = {}
    for name, split in zip(("train", "val"), splits):
        arrays |= {f"{name}_tokens": split.tokens, f"{name}_labels": split.labels,
                   f"{name}_counts": np.array([getattr(split, f) for f in _SPLIT_FIELDS], dtype=np.int64)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, **arrays)


def _read_packed(path: Path, seq_len: int) -> list[PackedSplit] | None:
    """The splits cached by ``_write_packed``; None when the file cannot be read (it is then rebuilt)."""
    try:
        with np.load(path) as data:
            return [PackedSplit(data[f"{name}_tokens"], data[f"{name}_labels"], seq_len,
                                *(int(c) for c in data[f"{name}_counts"])) for name in ("train", "val")]
    except (OSError, ValueError, KeyError):
        return None


def prepare_sft(spec: str, tokenizer: Tokenizer, seq_len: int, val_fraction: float = 0.03,
                cache_dir: str | os.PathLike | None = None, *, split_seed: int = 0) -> SFTData:
    """Load, split, tokenize and pack the fine-tuning data ``spec`` for ``tokenizer`` and rows of ``seq_len``.

    Raises :class:`DataError` with one sentence naming the bad input.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    conversations, description = load_conversations(spec.strip(), cache)
    fingerprint = hashlib.sha256(json.dumps(conversations).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([PACK_VERSION, fingerprint, tokenizer.id, seq_len, val_fraction, split_seed]
                                    ).encode()).hexdigest()[:20]
    packed = cache / "sft" / f"packed-{key}.npz"
    splits = _read_packed(packed, seq_len) if packed.is_file() else None
    if splits is None:
        splits = [pack(tokenize_conversations(tokenizer, part), seq_len, tokenizer.eot_id)
                  for part in split_conversations(conversations, val_fraction, split_seed)]
        _write_packed(packed, splits)
    for name, split in zip(("training", "validation"), splits):
        if split.rows == 0:
            raise DataError(f"no {name} conversation of {spec!r} keeps a response within seq_len={seq_len}; "
                            "raise seq_len or give shorter prompts")
    return SFTData(spec.strip(), description, tokenizer, splits[0], splits[1], fingerprint)
