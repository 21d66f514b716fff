"""Start from a Hugging Face model folder: ``muonlab train --init_from DIR``.

:func:`read_hf_folder` checks a local folder — a ``muonlab export`` or any Llama / DeepSeek-V3
causal LM with a ``tokenizer.json`` — and says in one sentence why one cannot be used, before any
weights are read. The weights are read by transformers (``AutoModelForCausalLM.from_pretrained``,
so every layout it loads is accepted: sharded safetensors, per-expert tensors) and mapped onto
muonlab's ``Transformer`` by :mod:`.hf_convert`; the tokenizer is the folder's (:class:`FolderTokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models import ModelConfig
from .hf_convert import HFFormatError, from_hf_state, model_config_from_hf
from .hf_tokenizer import FolderTokenizer

__all__ = ["HFModelFolder", "read_hf_folder", "require_transformers"]


def require_transformers():
    """The transformers module, or ``HFFormatError`` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise HFFormatError("Hugging Face model folders need transformers, which is not installed; "
                            "install it with: pip install 'muonlab[hf]'") from None
    return transformers


@dataclass
class HFModelFolder:
    """A checked Hugging Face model folder: its muonlab config and tokenizer; :meth:`load_into` reads the weights."""

    path: Path
    model_config: ModelConfig
    tokenizer: FolderTokenizer
    hf_config: Any

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the folder's weights (as fp32) into ``model``, a ``Transformer(self.model_config)``."""
        transformers = require_transformers()
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32,
                                                                     use_safetensors=True)
        interleaved = bool(getattr(self.hf_config, "rope_interleave", False))
        state = from_hf_state(hf_model.state_dict(), self.model_config, interleaved)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise HFFormatError(f"the weights in {self.path} do not fit the model its config.json describes: "
                                f"{str(err).splitlines()[-1].strip()}") from None


def read_hf_folder(path: str | Path, seq_len: int | None = None) -> HFModelFolder:
    """Check the model folder ``path`` (for sequences of ``seq_len`` tokens) and return what muonlab needs of it.

    Raises:
        HFFormatError: the folder is not a model folder, has no tokenizer.json or safetensors weights, holds
            an architecture or option muonlab's model does not have, or is shorter than ``seq_len``.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HFFormatError(f"{path} is not a Hugging Face model folder: it has no config.json")
    if not any(path.glob("*.safetensors")):
        raise HFFormatError(f"{path} has no .safetensors weights; muonlab reads safetensors only (no pickled .bin)")
    transformers = require_transformers()
    try:
        hf = transformers.AutoConfig.from_pretrained(path)
    except (ValueError, OSError, KeyError) as err:
        raise HFFormatError(f"{path}/config.json cannot be read by transformers: "
                            f"{str(err).strip().splitlines()[0]}") from None
    cfg = model_config_from_hf(hf)
    eos = hf.eos_token_id[0] if isinstance(hf.eos_token_id, (list, tuple)) else hf.eos_token_id
    if eos is None:
        raise HFFormatError(f"{path}/config.json has no eos_token_id, which muonlab needs to separate documents")
    tokenizer = FolderTokenizer(path, int(eos))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise HFFormatError(f"the tokenizer in {path} has {tokenizer.vocab_size} ids but the model only "
                            f"{cfg.vocab_size} embeddings")
    if seq_len is not None and seq_len > cfg.max_seq_len:
        raise HFFormatError(f"seq_len={seq_len} exceeds the max_position_embeddings={cfg.max_seq_len} of the model "
                            f"in {path}; use seq_len <= {cfg.max_seq_len}")
    return HFModelFolder(path, cfg, tokenizer, hf)
