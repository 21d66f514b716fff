"""The pure planning behind distributed Muon (no processes): owner balance, ZeRO-1 layout, FSDP2 row blocks.

The bounds here are the ones the benchmark reports (benchmarks/distributed.py): Newton–Schulz
FLOPs per rank ≤ 1/N of the total + one largest matrix, optimizer state per rank ≤ 1/N of the
total + one largest matrix, and every byte of every parameter in exactly one place.
"""

from __future__ import annotations

import random

import pytest
import torch

from muonlab.optim.distributed.layouts import MatrixParam, Zero1Layout, chunk_rows, replicated_units
from muonlab.optim.distributed.owners import Block, OwnerCompute, lpt_assign
from muonlab.optim.distributed.shards import sharded_units


def _random_model(seed: int, n_matrices: int = 12, n_adamw: int = 5):
    rng = random.Random(seed)
    mats = []
    for k in range(n_matrices):
        rows, cols, batch = rng.randint(1, 40), rng.randint(1, 40), rng.choice([1, 1, 1, 3, 5])
        m, n = min(rows, cols), max(rows, cols)
        mats.append(MatrixParam(k, (rows, cols), batch, rows, cols, float(4 * m * m * n + 2 * m**3)))
    adamw = [(n_matrices + j, rng.randint(1, 2000)) for j in range(n_adamw)]
    return mats, adamw


@pytest.mark.parametrize("seed", range(5))
def test_lpt_keeps_every_rank_within_one_largest_item_of_the_mean(seed):
    rng = random.Random(seed)
    costs = [rng.uniform(1, 100) for _ in range(rng.randint(1, 40))]
    for world in (1, 2, 3, 4, 7):
        owners = lpt_assign(costs, world)
        loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
        assert max(loads) <= sum(costs) / world + max(costs) + 1e-9
        assert owners == lpt_assign(costs, world)  # every rank computes the same plan


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_zero1_layout_places_every_element_once_and_balances_state_and_work(seed, world):
    mats, adamw = _random_model(seed)
    layout = Zero1Layout(mats, adamw, world)
    numel = {m.index: m.batch * m.rows * m.cols for m in mats} | dict(adamw)
    covered = {k: torch.zeros(n, dtype=torch.int32) for k, n in numel.items()}
    flat = torch.zeros(world * layout.chunk, dtype=torch.int32)
    for s in layout.segments:
        covered[s.param][s.lo : s.hi] += 1
        flat[s.flat : s.flat + s.numel] += 1
    assert all(bool((c == 1).all()) for c in covered.values()), "a parameter element is missing or duplicated"
    assert int(flat.max()) == 1 and int(flat.sum()) == layout.total
    assert layout.chunk == -(-layout.total // world)  # equal chunks, padding < world
    # Per rank: pieces tile its chunk, and the state (momentum 1x, AdamW 2x) stays within 1/N + one matrix.
    muon_params = {m.index for m in mats}
    largest = max(m.rows * m.cols for m in mats)
    total_state = sum(n * (1 if k in muon_params else 2) for k, n in numel.items())
    for rank in range(world):
        pieces = layout.pieces(rank)
        assert sum(p.numel for p in pieces) == min(layout.chunk, max(0, layout.total - rank * layout.chunk))
        state = sum(p.numel * (1 if p.segment.param in muon_params else 2) for p in pieces)
        assert state <= total_state / world + largest + world
    cost = {m.index: m.cost for m in mats}
    work = [
        sum(u.batch * cost[w.param] for u, w in zip(layout.units, layout.where) if u.owner == r) for r in range(world)
    ]
    assert max(work) <= sum(m.batch * m.cost for m in mats) / world + max(cost.values()) + 1e-6


def test_zero1_matrices_are_cut_only_when_adamw_cannot_absorb_the_imbalance():
    mats = [MatrixParam(k, (10, 10), 1, 10, 10, 1.0) for k in range(3)]
    no_adamw = Zero1Layout(mats, [], 2)  # 300 elements, chunks of 150: one matrix must be cut
    assert sum(sum(hi > lo for lo, hi in u.inputs) > 1 for u in no_adamw.units) == 1
    with_adamw = Zero1Layout(mats, [(3, 100)], 2)  # chunks of 200: 2 matrices | 1 matrix + 100 AdamW
    assert all(sum(hi > lo for lo, hi in u.inputs) == 1 for u in with_adamw.units)


def _fsdp_pieces(m: MatrixParam, world: int) -> list:
    """Each rank's piece of ``m`` under FSDP2's Shard(0): expert ranges of a stack, row blocks of a matrix."""
    if m.batch > 1:
        return [(o, o + c) if c else None for o, c in chunk_rows(m.batch, world)]
    return [Block((o, o + c), (0, m.cols)) if c else None for o, c in chunk_rows(m.rows, world)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_units_follow_torch_chunk_and_keep_experts_where_they_are(world):
    for n in (1, 2, 5, 35):  # FSDP2's Shard(0) splits dim 0 like torch.chunk (possibly fewer, uneven blocks)
        assert [(o, c) for o, c in chunk_rows(n, world) if c] == [
            (int(p[0]), len(p)) for p in torch.arange(n).chunk(world)
        ]
    stack = MatrixParam(0, (7, 9), 5, 7, 9, 1.0)  # 5 experts
    matrix = MatrixParam(1, (35, 20), 1, 35, 20, 1.0)
    whole = Block((0, 35), (0, 20))
    units, where = sharded_units([stack, matrix], [_fsdp_pieces(stack, world), _fsdp_pieces(matrix, world)],
                                 [[None] * world, [whole] * world], world)
    for u, w in zip(units, where):
        if w.param == 0:  # whole experts: computed where they are, nothing sent
            assert [r for r, (lo, hi) in enumerate(u.inputs) if hi > lo] == [u.owner] and u.outputs == u.inputs
    assert sorted((w.first, u.batch) for u, w in zip(units, where) if w.param == 0) == [
        (o, c) for o, c in chunk_rows(5, world) if c]
    (row_unit,) = [u for u, w in zip(units, where) if w.param == 1]
    rows = [b.rows for b in row_unit.inputs if b.area]
    assert rows == [(o, o + c) for o, c in chunk_rows(35, world) if c]
    assert all(b.cols == (0, 20) for b in row_unit.inputs if b.area) and row_unit.outputs == row_unit.inputs


def _mesh_pieces(rows: int, cols: int, dp: int, tp: int, tp_dim: int) -> list[Block]:
    """Rank ``d·tp + t``'s block on a (dp_shard, tp) mesh: TP splits dim ``tp_dim`` (column-wise 0,
    row-wise 1), FSDP2 then splits the TP block's rows."""
    pieces = []
    for d in range(dp):
        for t in range(tp):
            r0, nr, c0, nc = 0, rows, 0, cols
            if tp_dim == 0:
                r0, nr = chunk_rows(rows, tp)[t]
            else:
                c0, nc = chunk_rows(cols, tp)[t]
            o, c = chunk_rows(nr, dp)[d]
            pieces.append(Block((r0 + o, r0 + o + c), (c0, c0 + nc)))
    return pieces


@pytest.mark.parametrize("tp_dim", [0, 1])
def test_mesh_units_tile_each_matrix_once_and_send_every_block_back_to_its_holder(tp_dim):
    dp, tp, world = 2, 2, 4
    mats = [MatrixParam(k, (9, 6), 1, 9, 6, 1.0) for k in range(5)]
    pieces = _mesh_pieces(9, 6, dp, tp, tp_dim)
    units, where = sharded_units(mats, [pieces] * 5, [[Block((0, 9), (0, 6))] * world] * 5, world)
    assert sorted(w.param for w in where) == list(range(5))  # one unit per matrix: orthogonalized once
    assert sorted(u.owner for u in units) == [0, 0, 1, 2, 3]  # balanced
    for u in units:
        assert (u.rows, u.cols) == (9, 6) and u.tiled()
        assert list(u.outputs) == pieces and list(u.inputs) == pieces


def test_mesh_units_take_a_replica_once_and_return_it_to_every_holder():
    """A matrix sharded on tp only, replicated over dp_shard: rank d·2 + t holds TP block t."""
    m = MatrixParam(0, (8, 6), 1, 8, 6, 1.0)
    pieces = [Block((0, 4), (0, 6)), Block((4, 8), (0, 6))] * 2
    (unit,), _ = sharded_units([m], [pieces], [[Block((0, 8), (0, 6))] * 4], 4)
    assert unit.tiled() and sum(b.area > 0 for b in unit.inputs) == 2 and list(unit.outputs) == pieces
    block_of_owner = unit.outputs[unit.owner]
    assert unit.inputs[unit.owner] == block_of_owner  # the owner sends its own copy to nobody


def test_blockwise_regions_orthogonalize_each_tensor_parallel_block_as_its_own_matrix():
    from muonlab.optim.blocks import Blocks
    from muonlab.optim.engines import BucketKey

    key = BucketKey(9, 6, 5, "jordan", torch.float32, "standard", 1e-7, torch.float32, torch.float32, False,
                    Blocks.whole(9, 6))
    m = MatrixParam(0, key, 1, 9, 6, 1.0)
    pieces = _mesh_pieces(9, 6, 2, 2, 1)  # row-wise TP: column blocks of 3, FSDP rows 5 + 4
    tp_blocks = [Block((0, 9), (0, 3)), Block((0, 9), (3, 6))] * 2
    units, _ = sharded_units([m], [pieces], [tp_blocks], 4)
    assert [(u.rows, u.cols, u.key.rows, u.key.cols) for u in units] == [(9, 3, 9, 3)] * 2
    assert all(u.tiled() and sum(b.area > 0 for b in u.inputs) == 2 for u in units)


def _travelling(unit) -> int:
    """Elements of a unit that move between ranks: every input and output region of a rank other than its owner."""
    return sum(b.area for r, b in enumerate(unit.inputs + unit.outputs) if r % len(unit.inputs) != unit.owner)


def test_heads_whole_on_a_rank_are_orthogonalized_there_and_nothing_travels():
    """Tensor parallelism over 2 ranks: rank t holds head rows [4t, 4t + 4) of an 8 × 6 projection (per-head regions),
    and half of a large matrix that loads the owners first (least-loaded balancing alone would send rank 0's heads to
    rank 1)."""
    from muonlab.optim.blocks import Blocks
    from muonlab.optim.engines import BucketKey

    key = BucketKey(8, 6, 5, "jordan", torch.float32, "standard", 1e-7, torch.float32, torch.float32, False,
                    Blocks((4, 4), (6,)))
    big = MatrixParam(0, (64, 64), 1, 64, 64, 1000.0)
    heads = MatrixParam(1, key, 1, 8, 6, 1.0)
    big_pieces = [Block((0, 32), (0, 64)), Block((32, 64), (0, 64))]
    head_pieces = [Block((0, 4), (0, 6)), Block((4, 8), (0, 6))]
    units, where = sharded_units([big, heads], [big_pieces, head_pieces],
                                 [[Block((0, 64), (0, 64))] * 2, head_pieces], 2)
    mine = [u for u, w in zip(units, where) if w.param == 1]
    assert len(mine) == 2 and sorted(u.owner for u in mine) == [0, 1]
    assert all(_travelling(u) == 0 and u.tiled() for u in mine)
    # negative control: the same pieces orthogonalized as one matrix must gather (and send back) half of it
    units, where = sharded_units([big, heads], [big_pieces, head_pieces], [[Block((0, 64), (0, 64))] * 2,
                                                                          [Block((0, 8), (0, 6))] * 2], 2)
    (whole,) = [u for u, w in zip(units, where) if w.param == 1]
    assert _travelling(whole) == 2 * 4 * 6


def test_replicated_units_split_one_stack_among_owners_and_share_results():
    units, where = replicated_units([MatrixParam(0, (4, 4), 6, 4, 4, 1.0)], 3)
    assert sorted(u.owner for u in units) == [0, 1, 2] and sum(u.batch for u in units) == 6
    assert all(u.outputs == ((0, u.numel),) * 3 for u in units)


def test_owner_compute_on_one_process_runs_each_bucket_once_and_sends_nothing():
    mats = [
        MatrixParam(0, (2, 3), 1, 2, 3, 1.0),
        MatrixParam(1, (2, 3), 2, 2, 3, 1.0),
        MatrixParam(2, (3, 3), 1, 3, 3, 1.0),
    ]
    units, _ = replicated_units(mats, 1)
    executor = OwnerCompute(units, 0, 1, None, dtypes=lambda key: (torch.float32, torch.float32), order=lambda key: 0)
    calls = []

    def compute(key, ids, batch):
        calls.append((key, ids))
        return 2 * batch

    pieces = {i: torch.arange(u.numel, dtype=torch.float32) for i, u in enumerate(units)}
    out = {}
    executor.run(lambda i, dst: dst.copy_(pieces[i]), compute, out.update, torch.device("cpu"))
    assert sorted(len(ids) for _, ids in calls) == [1, 2]  # two buckets, each in one call
    assert all(torch.equal(out[i], 2 * pieces[i]) for i in pieces)


def test_boxes_tile_a_tensor_only_without_gaps_or_overlaps_and_replicas_count_once():
    from muonlab.optim.distributed.shards import Box, tiles

    halves = [Box((0, 0), (4, 6)), Box((4, 0), (4, 6))]
    assert tiles((8, 6), halves) and tiles((8, 6), halves * 2)  # replicas (e.g. across tp) count once
    assert not tiles((8, 6), halves[:1])  # a gap
    assert not tiles((8, 6), [Box((0, 0), (5, 6)), Box((4, 0), (4, 6))])  # an overlap (and out of bounds)
    assert tiles((8, 6), [Box((0, 0), (8, 3)), Box((0, 3), (8, 3)), Box((0, 0), (0, 6))])  # empty boxes ignored


def test_held_pieces_follow_the_matrix_view_and_refuse_cuts_it_cannot_follow():
    from muonlab.optim.distributed.shards import Box, held_piece

    assert held_piece((9, 6), Box((5, 3), (4, 3)), stacked=False) == Block((5, 9), (3, 6))
    assert held_piece((4, 3, 2, 2), Box((2, 0, 0, 0), (2, 3, 2, 2)), stacked=False) == Block((2, 4), (0, 12))
    assert held_piece((5, 7, 9), Box((3, 0, 0), (2, 7, 9)), stacked=True) == (3, 5)
    assert held_piece((9, 6), Box((9, 0), (0, 6)), stacked=False) is None
    with pytest.raises(ValueError, match="split inside its experts"):
        held_piece((5, 7, 9), Box((0, 0, 0), (5, 4, 9)), stacked=True)
    with pytest.raises(ValueError, match="needs whole rows"):
        held_piece((4, 3, 2, 2), Box((0, 0, 0, 0), (4, 3, 1, 2)), stacked=False)
