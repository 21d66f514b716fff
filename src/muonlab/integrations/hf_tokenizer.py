"""muonlab tokenizers <-> Hugging Face tokenizer files (``tokenizer.json`` + ``tokenizer_config.json``).

Export (:func:`write_tokenizer`): a BPE tokenizer is already a ``tokenizers`` BPE and is written as
it is; the byte tokenizer becomes a byte-level BPE without merges whose token for byte ``b`` has
id ``b`` (GPT-2's printable stand-in characters, :func:`byte_chars`) and ``<|endoftext|>`` id 256,
so every text encodes to its UTF-8 bytes, as muonlab's ``ByteTokenizer`` does. ``tokenizer_config.json``
names the end-of-text token as ``eos_token`` and as ``pad_token`` (muonlab's vocabularies have no
padding token of their own; padding is masked out by the attention mask, so which id pads does not
matter), pads on the left so batched ``generate()`` continues each prompt from its last token, and
sets ``split_special_tokens``: as in muonlab, text that contains ``"<|endoftext|>"`` is encoded as
plain text, never as the end-of-text id.

Import (:class:`FolderTokenizer`): any folder's ``tokenizer.json`` used through ``tokenizers``,
with the model's ``eos_token_id`` as the end-of-text id that separates documents.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from ..data import EOT_TOKEN, BPETokenizer, ByteTokenizer, Tokenizer
from ..data.tokenizer import WrappedTokenizer
from .hf_convert import HFFormatError

__all__ = ["FolderTokenizer", "byte_chars", "byte_level_tokenizer", "write_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"


def byte_chars() -> list[str]:
    """The character byte-level BPE writes for each byte 0..255 (GPT-2's convention): printable
    Latin-1 bytes other than space stand for themselves; the other bytes, in order, for chr(256 + k)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_level_tokenizer() -> HFTokenizer:
    """muonlab's byte tokenizer as a ``tokenizers.Tokenizer``: byte ``b`` is id ``b``, ``<|endoftext|>`` id 256."""
    tokenizer = HFTokenizer(models.BPE(vocab={char: b for b, char in enumerate(byte_chars())}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT_TOKEN, special=True)])
    return tokenizer


class FolderTokenizer(WrappedTokenizer):
    """A Hugging Face folder's ``tokenizer.json`` with the muonlab tokenizer interface.

    ``id`` is ``hf-<sha256 of tokenizer.json>`` (so token shards are cached per vocabulary);
    ``eot_id`` the model's end-of-sequence id, which separates documents.
    """

    def __init__(self, folder: str | Path, eot_id: int) -> None:
        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise HFFormatError(f"{folder} has no {TOKENIZER_FILE}; muonlab reads fast (tokenizers) tokenizers only")
        text = path.read_text()
        try:
            self._tok = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
            raise HFFormatError(f"{path} is not a tokenizers file ({e})") from None
        self._tok.encode_special_tokens = True  # as muonlab: text never encodes to the end-of-text id
        self.id = f"hf-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        self.vocab_size = self._tok.get_vocab_size()
        self.eot_id = eot_id
        if not 0 <= eot_id < self.vocab_size:
            raise HFFormatError(f"the end-of-sequence id {eot_id} is outside the tokenizer's {self.vocab_size} ids")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self._tok.to_str())

    def token(self, i: int) -> str:
        return self._tok.id_to_token(i)


def write_tokenizer(tokenizer: Tokenizer, folder: Path, max_length: int, chat_template: str | None = None) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``tokenizer`` into ``folder`` (with
    ``chat_template``, a Jinja template, when given)."""
    if isinstance(tokenizer, ByteTokenizer):
        (folder / TOKENIZER_FILE).write_text(byte_level_tokenizer().to_str())
        eos = EOT_TOKEN
    elif isinstance(tokenizer, (BPETokenizer, FolderTokenizer)):
        tokenizer.save(folder / TOKENIZER_FILE)
        eos = tokenizer.token(tokenizer.eot_id) if isinstance(tokenizer, FolderTokenizer) else EOT_TOKEN
    else:
        raise HFFormatError(f"a {type(tokenizer).__name__} cannot be written as a Hugging Face tokenizer; "
                            "muonlab exports its byte and BPE tokenizers")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos, "padding_side": "left",
              "model_max_length": max_length, "split_special_tokens": True, "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
