"""A run's data and training batches, by task: pretraining text or fine-tuning conversations.

``task="pretrain"``: :func:`muonlab.data.prepare_dataset` (every token is a target).
``task="sft"``: :func:`muonlab.data.sft.prepare_sft` with the ``init_from`` model's tokenizer, rows of
``seq_len`` packed conversations whose targets are masked to the responses. Either way the data has
``describe()``, ``vocab_size`` and ``val_batches(batch_size, seq_len, max_batches)``, and the
:class:`~muonlab.data.TokenLoader` deals the training windows (the same order, resume state and ranks).
"""

from __future__ import annotations

from ..data import Dataset, Tokenizer, TokenLoader, prepare_dataset
from ..data.sft import SFTData, prepare_sft
from ..parallel import Runtime
from .config import TrainConfig

__all__ = ["build_data"]


def build_data(config: TrainConfig, runtime: Runtime, tokenizer: Tokenizer | None) -> tuple[Dataset | SFTData,
                                                                                            TokenLoader]:
    """The data of a run and its training loader; ``tokenizer``: the ``init_from`` model's, if any."""
    if config.task == "sft":
        data: Dataset | SFTData = prepare_sft(config.corpus, tokenizer, config.seq_len, config.val_fraction)
        tokens, labels = data.train.tokens, data.train.labels
    else:
        data = prepare_dataset(config.corpus, tokenizer=tokenizer or config.tokenizer, vocab_size=config.vocab_size,
                               val_fraction=config.val_fraction)
        tokens, labels = data.train_tokens, None
    loader = TokenLoader(tokens, config.batch_size, config.seq_len, seed=config.seed, rank=runtime.dp_rank,
                         world_size=runtime.dp_size, labels=labels)
    return data, loader
