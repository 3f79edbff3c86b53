"""Cuts of sharded tables (lit_dlrm.sparsity.sharded): the shards pruned with their cuts are, bit
for bit, the slices of the whole tables pruned by the one-process engine, per table and global,
L1 and L2, (1, 1) and (1, 4) blocks, in one process (every shard local) and on 2 gloo ranks."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_dlrm.sparsity.global_threshold import global_cuts
from lit_dlrm.sparsity.prune import apply_cuts, cuts_for_levels
from lit_dlrm.sparsity.sharded import Shard, shard_cuts

LEVELS = [0.0, 0.1, 0.37, 0.5, 0.9, 0.99, 1.0]
CHUNK = 96  # many chunks per shard


def tables():
    """Few distinct values (ties split inside tables, rows and across shards), a table of one
    row, a table tall enough for several rows per tie bucket, and one without ties."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(-3, 4, (90, 16), generator=g).float() * 0.25,
        torch.rand(1, 8, generator=g) - 0.5,
        torch.randint(-2, 3, (4200, 8), generator=g).float() * 0.125,
        torch.randn(70, 12, generator=g),
        torch.randint(-1, 2, (33, 12), generator=g).float() * 0.5,
    ]


def splits(shape, how):
    """(row, column, rows, columns) slices tiling a table: whole, column-wise (widths multiples
    of 4, unequal), row-wise or a grid."""
    n, d = shape
    if how == "table_wise":
        return [(0, 0, n, d)]
    if how == "column_wise":
        return [(0, 0, n, 4), (0, 4, n, d - 4)]
    cut = max(1, n // 3)
    if how == "row_wise" and n > 1:
        return [(0, 0, cut, d), (cut, 0, n - cut, d)]
    return (
        [(0, 0, n, 4), (0, 4, n, d - 4)]
        if n == 1
        else [(r, c, h, w) for r, h in ((0, cut), (cut, n - cut)) for c, w in ((0, 4), (4, d - 4))]
    )


def shards_of(ws, how, rank=0, world=1):
    """Rank ``rank``'s shards of ``ws`` (slices dealt round-robin), as views of the tables."""
    out, i = [], 0
    for t, w in enumerate(ws):
        for r, c, h, wd in splits(w.shape, how):
            if i % world == rank:
                out.append(Shard(t, w[r : r + h, c : c + wd], (r, c)))
            i += 1
    return out


def whole_pruned(ws, norm, bs, threshold):
    cuts = (global_cuts if threshold == "global" else cuts_for_levels)(ws, norm, bs, LEVELS)
    return {
        lv: apply_cuts(ws, cuts.for_level(lv), norm, bs, out=[w.clone() for w in ws])
        for lv in LEVELS
    }


def check_equal(ws, shards, series, want, norm, bs):
    """Every shard pruned with its cut equals its slice of ``want``, bit for bit."""
    for lv in LEVELS:
        parts = [s.weight for s in shards]
        out = apply_cuts(
            parts, series.for_level(lv), norm, bs, out=[torch.full_like(p, 7.0) for p in parts]
        )
        for s, got in zip(shards, out):
            (r, c), (h, wd) = s.offset, s.weight.shape
            expected = want[lv][s.table][r : r + h, c : c + wd]
            assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), (
                lv,
                s.table,
                s.offset,
            )


COMBOS = [
    (n, bs, th) for n in ("L1", "L2") for bs in ((1, 1), (1, 4)) for th in ("per_table", "global")
]


@pytest.mark.parametrize("how", ["table_wise", "column_wise", "row_wise", "grid"])
@pytest.mark.parametrize("norm, bs, threshold", COMBOS)
def test_local_shards_prune_as_whole_tables(how, norm, bs, threshold):
    ws = tables()
    want = whole_pruned(ws, norm, bs, threshold)
    shards = shards_of(ws, how)
    series = shard_cuts(
        shards, [w.shape for w in ws], norm, bs, LEVELS, threshold=threshold, chunk_elems=CHUNK
    )
    check_equal(ws, shards, series, want, norm, bs)


def test_refuses_blocks_across_shards_and_shards_that_do_not_tile():
    w = torch.zeros(10, 8)
    with pytest.raises(
        ValueError, match=r"shards\[0\]: the \(10, 2\) slice at \(0, 0\) of table 0 splits blocks"
    ):
        shard_cuts(
            [Shard(0, w[:, :2], (0, 0)), Shard(0, w[:, 2:], (0, 2))], [(10, 8)], "L1", (1, 4), [0.5]
        )
    with pytest.raises(ValueError, match="table 0 .* its shards over all processes 10"):
        shard_cuts([Shard(0, w[:, :4], (0, 0))], [(10, 8)], "L1", (1, 4), [0.5])


def rank_main(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ws = tables()

    def reduce(x):
        dist.all_reduce(x)

    held = []
    for how in ("column_wise", "grid"):
        for norm, bs, threshold in COMBOS:
            shards = shards_of(ws, how, rank, world)
            shapes = [w.shape for w in ws]
            series = shard_cuts(
                shards, shapes, norm, bs, LEVELS, threshold=threshold, reduce=reduce
            )
            check_equal(ws, shards, series, whole_pruned(ws, norm, bs, threshold), norm, bs)
            held.append(len(shards))
    torch.save(held, f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_the_cuts(tmp_path):
    """Column-wise (each table's two column slices on the two ranks) and a grid (row and column
    slices dealt round-robin): every rank's pruned shards equal the one-process sweep's."""
    out = tmp_path / "held"
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    held = [torch.load(f"{out}.{rank}") for rank in range(2)]
    assert all(n > 0 for h in held for n in h)  # both ranks held shards in every check
