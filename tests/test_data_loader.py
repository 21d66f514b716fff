"""TokenLoader and val_batches: windows, determinism, resume, ranks, size errors."""

import json

import numpy as np
import pytest
import torch

from muonlab.data import DataError, TokenLoader, val_batches

# Token i has value i, so a batch tells exactly which stream positions it came from.
TOKENS = np.arange(10_001, dtype=np.uint32)


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batches_are_shifted_non_overlapping_windows():
    loader = TokenLoader(TOKENS, batch_size=4, seq_len=16, seed=0)
    starts = []
    for x, y in _batches(loader, loader.batches_per_epoch):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous runs of the stream
        starts += x[:, 0].tolist()
    assert all(s % 16 == 0 for s in starts)
    assert len(set(starts)) == len(starts) == (10_000 // 16) // 4 * 4  # no window twice per epoch
    assert starts != sorted(starts)  # shuffled


def test_same_seed_same_batches_different_seed_different():
    a = _batches(TokenLoader(TOKENS, 4, 16, seed=1), 5)
    b = _batches(TokenLoader(TOKENS, 4, 16, seed=1), 5)
    c = _batches(TokenLoader(TOKENS, 4, 16, seed=2), 5)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_epochs_reshuffle():
    loader = TokenLoader(TOKENS[:1601], batch_size=10, seq_len=16, seed=0)  # 100 windows, 10 batches
    first = torch.cat([x for x, _ in _batches(loader, 10)])[:, 0]
    second = torch.cat([x for x, _ in _batches(loader, 10)])[:, 0]
    assert loader.epoch == 1
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(0, 1600, 16))
    assert not torch.equal(first, second)


def test_resume_continues_the_same_sequence():
    reference = _batches(TokenLoader(TOKENS, 8, 32, seed=3), 70)  # crosses an epoch (39 per epoch)
    loader = TokenLoader(TOKENS, 8, 32, seed=3)
    _batches(loader, 25)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = TokenLoader(TOKENS, 8, 32, seed=3)
    resumed.load_state_dict(state)
    for (x_ref, y_ref), (x, y) in zip(reference[25:], _batches(resumed, 45)):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_ranks_split_the_global_batch():
    single = TokenLoader(TOKENS, batch_size=6, seq_len=16, seed=0)
    ranks = [TokenLoader(TOKENS, batch_size=3, seq_len=16, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(single.batches_per_epoch + 3):  # into the second epoch too
        x_all, _ = single.next_batch()
        (x0, _), (x1, _) = (r.next_batch() for r in ranks)
        assert not set(x0[:, 0].tolist()) & set(x1[:, 0].tolist())
        assert torch.equal(torch.cat([x0, x1]), x_all)


def test_resume_with_another_world_size_but_same_global_batch():
    single = TokenLoader(TOKENS, batch_size=4, seq_len=16, seed=0)
    _batches(single, 7)
    rank1 = TokenLoader(TOKENS, batch_size=2, seq_len=16, seed=0, rank=1, world_size=2)
    rank1.load_state_dict(single.state_dict())
    assert torch.equal(rank1.next_batch()[0], single.next_batch()[0][2:])


def test_incompatible_state_is_refused():
    state = TokenLoader(TOKENS, 4, 16, seed=0).state_dict()
    with pytest.raises(DataError, match="seq_len=16 but this loader has seq_len=32"):
        TokenLoader(TOKENS, 4, 32, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="batch_in_epoch=-1"):
        TokenLoader(TOKENS, 4, 16, seed=0).load_state_dict({**state, "batch_in_epoch": -1})


def test_too_small_corpus_and_bad_arguments():
    with pytest.raises(DataError, match="100 tokens.*3 windows.*seq_len=32.*global batch of 8"):
        TokenLoader(np.arange(100), batch_size=4, seq_len=32, seed=0, world_size=2)
    with pytest.raises(DataError, match="rank=2.*0..1"):
        TokenLoader(TOKENS, 4, 16, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch_size=0"):
        TokenLoader(TOKENS, 0, 16, seed=0)
    with pytest.raises(DataError, match="validation split has 10 tokens.*seq_len=16"):
        next(val_batches(np.arange(10), 4, 16))


def test_val_batches_are_fixed_and_in_order():
    first = list(val_batches(TOKENS[:1001], batch_size=4, seq_len=16))
    assert len(first) == (1000 // 16) // 4
    starts = torch.cat([x for x, _ in first])[:, 0].tolist()
    assert starts == list(range(0, 16 * 4 * len(first), 16))
    assert all(torch.equal(y, x + 1) for x, y in first)
    again = list(val_batches(TOKENS[:1001], batch_size=4, seq_len=16, max_batches=3))
    assert len(again) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    [(x, _)] = val_batches(TOKENS[:50], batch_size=8, seq_len=16)  # fewer windows than a batch
    assert x.shape == (3, 16)


def test_memmap_input(tmp_path):
    path = tmp_path / "t.bin"
    TOKENS.astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = TokenLoader(tokens, 2, 8, seed=0).next_batch()
    assert x.dtype == torch.int64 and torch.equal(y, x + 1)
