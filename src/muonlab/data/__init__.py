"""Training data for muonlab: corpora, tokenizers, token shards and batch loaders.

Typical use::

    from muonlab.data import prepare_dataset, TokenLoader, val_batches

    data = prepare_dataset("english", tokenizer="bpe", vocab_size=4096)   # cached after the first call
    print(data.describe())
    loader = TokenLoader(data.train_tokens, batch_size=16, seq_len=256, seed=0)
    x, y = loader.next_batch()                      # int64 [16, 256]; y is x shifted by one token
    for vx, vy in val_batches(data.val_tokens, 16, 256, max_batches=8):
        ...

Built-in corpora need no download: ``"english"`` (the King James Bible) and ``"python"`` (the
standard library's sources). Local .txt/.jsonl/.parquet files, directories, globs and
``hf:NAME[:SPLIT]`` datasets work too. Every bad input raises :class:`DataError`.

Fine-tuning data (conversations, the chat template, packing with the loss on the responses only)
is :func:`muonlab.data.sft.prepare_sft`.
"""

from .corpora import ACCEPTED_FILE_TYPES, BUILTIN_CORPORA, Corpus, load_corpus
from .dataset import Dataset, default_cache_dir, prepare_dataset
from .errors import DataError
from .loader import TokenLoader, val_batches
from .shards import open_shards, split_documents, write_shards
from .tokenizer import EOT_TOKEN, BPETokenizer, ByteTokenizer, Tokenizer, train_bpe

__all__ = [
    "ACCEPTED_FILE_TYPES",
    "BUILTIN_CORPORA",
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "DataError",
    "Dataset",
    "EOT_TOKEN",
    "TokenLoader",
    "Tokenizer",
    "default_cache_dir",
    "load_corpus",
    "open_shards",
    "prepare_dataset",
    "split_documents",
    "train_bpe",
    "val_batches",
    "write_shards",
]
