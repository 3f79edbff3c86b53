"""Cuts of tables split into shards over processes, equal to the whole tables' cuts.

Each process passes the shards it holds (:class:`Shard`: the table, its slice, the slice's
``(row, column)`` offset in the whole table) and a ``reduce`` that sums an int64 tensor over the
processes in place (``torch.distributed.all_reduce``; the identity when one process holds every
shard). :func:`shard_cuts` gives one :class:`~.prune.TableCut` per local shard and level, for
:func:`~.prune.apply_cuts` on the shards: the pruned shards are, bit for bit, the slices of the
whole tables pruned by :func:`~.prune.cuts_for_levels` (``threshold="per_table"``) or
:func:`~.global_threshold.global_cuts` (``"global"``).

The engine's counting passes are counts, so summing each pass over the shards gives the whole
table's counts exactly; every process then finds the same threshold bits ``t``. Ties at ``t`` are
pruned in the order of the whole table's block index, and that order restricted to one shard is
the shard's own block order, so a shard prunes a prefix of its ties: how many is found by locating
the whole table's last pruned tie (tie counts per bucket of block rows, per block row, per block
column, each summed over processes). Every process must call with the same ``shapes``, levels,
norm and block shape, and the shards of all processes must tile each table with blocks that never
straddle two shards. Float32 tables only. Reasoning: ``docs/design.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .chunks import row_chunks
from .prune import (
    CHUNK_ELEMS,
    LOW_BITS,
    NORMS,
    SeriesCuts,
    TableCut,
    bins_of,
    count_at,
    high_counts,
    locate,
    low_counts,
    num_blocks,
    score_bits,
)

Reduce = Callable[[Tensor], object]  # sums its int64 argument over the processes, in place
BUCKETS = 1 << 12  # tie counts per bucket of block rows: the first of the tie-locating passes


class Shard(NamedTuple):
    """A slice of table ``table``: ``weight`` (rows, columns) at ``offset`` (row, column)."""

    table: int
    weight: Tensor
    offset: tuple[int, int]


def _check(shards, shapes, norm, bs, levels) -> None:
    """ValueError naming the bad shard, level, norm or block shape."""
    if norm not in NORMS:
        raise ValueError(f"norm: unknown norm {norm!r} (expected L1 or L2)")
    for lv in levels:
        if not 0.0 <= float(lv) <= 1.0:
            raise ValueError(f"level: {lv} is outside [0, 1]")
    bh, bw = bs
    for i, (n, d) in enumerate(shapes):
        if not (1 <= bh <= max(n, 1) and 1 <= bw <= max(d, 1)):
            raise ValueError(f"block_shape: {bs} does not fit table {i} of shape {(n, d)}")
    for j, (table, w, (r, c)) in enumerate(shards):
        if not 0 <= table < len(shapes):
            raise ValueError(f"shards[{j}]: table {table} is not one of {len(shapes)} tables")
        if w.dtype != torch.float32 or w.dim() != 2:
            raise ValueError(
                f"shards[{j}]: expected a 2-D float32 slice, got {w.dtype} {tuple(w.shape)}"
            )
        (n, d), (h, wd) = shapes[table], w.shape
        if r + h > n or c + wd > d:
            raise ValueError(
                f"shards[{j}]: a {(h, wd)} slice at {(r, c)} overruns table {table} of {(n, d)}"
            )
        if r % bh or c % bw or (r + h < n and h % bh) or (c + wd < d and wd % bw):
            raise ValueError(
                f"shards[{j}]: the {(h, wd)} slice at {(r, c)} of table {table} splits blocks "
                f"of {bs} (expected offsets, and sizes short of the table's edge, that are "
                "multiples of the block shape)"
            )


def shard_cuts(
    shards: Sequence[Shard],
    shapes: Sequence[tuple[int, int]],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    threshold: str = "per_table",
    reduce: Reduce | None = None,
    chunk_elems: int = CHUNK_ELEMS,
) -> SeriesCuts:
    """The cuts of ``levels`` for this process's ``shards`` of the tables of ``shapes``:
    ``series.for_level(level)[j]`` prunes ``shards[j].weight``. Every process calls it with the
    same arguments but its own shards; ``reduce`` is called the same number of times on each.
    Raises ValueError naming a bad argument, or shards that do not tile a table."""
    bs = tuple(int(x) for x in block_shape)
    shapes = [tuple(int(x) for x in s) for s in shapes]
    levels = [float(lv) for lv in levels]
    if threshold not in ("per_table", "global"):
        raise ValueError(f"threshold: {threshold!r} (expected 'per_table' or 'global')")
    _check(shards, shapes, norm, bs, levels)
    sums = reduce or (lambda x: None)
    nbs = [num_blocks(s, bs) for s in shapes]
    kw = {"chunk_elems": chunk_elems}
    mine = [[j for j, s in enumerate(shards) if s.table == i] for i in range(len(shapes))]
    shard_highs = [high_counts(s.weight, norm, bs, **kw) for s in shards]  # pass 1
    highs = torch.zeros(len(shapes), 1 << (31 - LOW_BITS), dtype=torch.int64)
    for j, s in enumerate(shards):
        highs[s.table] += shard_highs[j]
    sums(highs)
    for i, nb in enumerate(nbs):
        if int(highs[i].sum()) != nb:
            raise ValueError(
                f"shards: table {i} {shapes[i]} has {nb} blocks of {bs}, its shards over all "
                f"processes {int(highs[i].sum())} (expected shards that tile it once)"
            )
    if threshold == "global":
        table_cuts = _global(shards, mine, shard_highs, highs, norm, bs, levels, nbs, sums, kw)
    else:
        table_cuts = _per_table(shards, mine, shard_highs, highs, norm, bs, levels, nbs, sums, kw)
    cuts: dict[float, list] = {lv: [None] * len(shards) for lv in levels}
    for i, shape in enumerate(shapes):  # the tables in order: the same reduces everywhere
        for lv in levels:
            cut, shard_at = table_cuts[i][lv]
            pruned = _split_ties(shards, mine[i], shape, cut, shard_at, norm, bs, sums, kw)
            for j in mine[i]:
                nb_j = num_blocks(shards[j].weight.shape, bs)
                if cut.k == 0:
                    cuts[lv][j] = TableCut(0, nb_j)
                elif cut.k == cut.num_blocks:
                    cuts[lv][j] = TableCut(nb_j, nb_j)
                else:
                    below, ties = shard_at[j]
                    cuts[lv][j] = TableCut(below + pruned[j], nb_j, cut.t, pruned[j], ties)
    return SeriesCuts(norm, bs, {lv: tuple(c) for lv, c in cuts.items()})


def _per_table(shards, mine, shard_highs, highs, norm, bs, levels, nbs, sums, kw) -> list[dict]:
    """Per table and level: (the whole table's cut, {shard: (below, ties) at its ``t``})."""
    out = []
    for i, nb in enumerate(nbs):
        ks = {lv: round(lv * nb) for lv in levels}
        todo = sorted({k for k in ks.values() if 0 < k < nb})
        found, shard_at = {}, {}
        if todo:
            bins = bins_of(highs[i], todo)
            lows = {j: low_counts(shards[j].weight, norm, bs, bins, **kw) for j in mine[i]}
            low = torch.zeros(len(bins), 1 << LOW_BITS, dtype=torch.int64)
            for counts in lows.values():
                low += counts
            sums(low)
            for k in todo:
                found[k] = t, below, ties = locate(highs[i], low, bins, k)
                shard_at[k] = {j: count_at(shard_highs[j], lows[j], bins, t) for j in mine[i]}
        table = {}
        for lv, k in ks.items():
            t, below, ties = found.get(k, (0, k, 0))
            table[lv] = (TableCut(k, nb, t, k - below, ties), shard_at.get(k, {}))
        out.append(table)
    return out


def _global(shards, mine, shard_highs, highs, norm, bs, levels, nbs, sums, kw) -> list[dict]:
    """As :func:`_per_table` for one threshold over all tables (the passes of
    :func:`~.global_threshold.global_cuts`, summed over processes)."""
    total = sum(nbs)
    big_k = {lv: round(lv * total) for lv in levels}
    todo = sorted({k for k in big_k.values() if 0 < k < total})
    per_k: dict[int, list] = {
        0: [(TableCut(0, nb), {}) for nb in nbs],
        total: [(TableCut(nb, nb), {}) for nb in nbs],
    }
    if todo:
        high = highs.sum(0)
        bins = bins_of(high, todo)
        low = torch.zeros(len(bins), 1 << LOW_BITS, dtype=torch.int64)
        for s in shards:  # pass 2, all tables together
            low += low_counts(s.weight, norm, bs, bins, **kw)
        sums(low)
        found = [locate(high, low, bins, k) for k in todo]
        # pass 3: each shard's (below, ties) at each threshold, summed per table
        at = torch.zeros(len(shards), len(todo), 2, dtype=torch.int64)
        for j, s in enumerate(shards):
            counts = low_counts(s.weight, norm, bs, bins, **kw)
            at[j] = torch.tensor([count_at(shard_highs[j], counts, bins, t) for t, _, _ in found])
        table_at = torch.zeros(len(nbs), len(todo), 2, dtype=torch.int64)
        for j, s in enumerate(shards):
            table_at[s.table] += at[j]
        sums(table_at)
        for q, (k, (t, below, _)) in enumerate(zip(todo, found)):
            left, cuts = k - below, []  # ties pruned in all go to the tables in order
            for i, nb in enumerate(nbs):
                below_i, ties_i = (int(x) for x in table_at[i, q])
                m = min(ties_i, left)
                left -= m
                shard_at = {j: tuple(int(x) for x in at[j, q]) for j in mine[i]}
                cuts.append((TableCut(below_i + m, nb, t, m, ties_i), shard_at))
            per_k[k] = cuts
    return [{lv: per_k[big_k[lv]][i] for lv in levels} for i in range(len(nbs))]


def _split_ties(shards, mine, shape, cut: TableCut, shard_at, norm, bs, sums, kw) -> dict:
    """How many of its ties (``shard_at[j] = (below, ties)``) each shard ``j`` of ``mine``
    prunes: those up to the whole table's ``cut.ties_pruned``-th tie in block order, found by
    three tie counts summed over processes (per bucket of block rows, per block row of the
    bucket, per block column of the row)."""
    m, ties = cut.ties_pruned, cut.ties_total
    if cut.k in (0, cut.num_blocks) or m in (0, ties):
        return {j: shard_at[j][1] if m else 0 for j in mine if j in shard_at}
    parts = [shards[j] for j in mine]

    def count(lo, hi, key, size):
        hist = _tie_hist(parts, cut.t, bs, norm, lo, hi, key, size, **kw)
        sums(hist)
        return hist

    def nth(hist, m):  # the bin holding the m-th tie, and m within it
        cum = hist.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor(m)))
        return b, m - (int(cum[b - 1]) if b else 0)

    rows, cols = -(-shape[0] // bs[0]), -(-shape[1] // bs[1])
    per = -(-rows // BUCKETS)
    b, m = nth(count(0, rows, lambda r, c: r // per, -(-rows // per)), m)
    r, m = nth(count(b * per, (b + 1) * per, lambda rr, c: rr - b * per, per), m)
    r += b * per
    c, _ = nth(count(r, r + 1, lambda rr, cc: cc, cols), m)

    def after(rr, cc):  # 0 for blocks up to (r, c) in block order, 1 after
        return ((rr == r) & (cc > c)).long()

    return {
        j: int(_tie_hist([shards[j]], cut.t, bs, norm, 0, r + 1, after, 2, **kw)[0]) for j in mine
    }


def _tie_hist(parts, t, bs, norm, lo, hi, key, size, *, chunk_elems) -> Tensor:
    """Over the blocks of ``parts`` in block rows ``[lo, hi)`` of the whole table that score
    exactly ``t``: how many ``key(row, column)`` (whole-table block indices) gives each value."""
    hist = torch.zeros(size, dtype=torch.int64)
    bh, bw = bs
    for _, w, (r_off, c_off) in parts:
        r0, c0 = r_off // bh, c_off // bw
        a, b = max(lo - r0, 0), min(hi - r0, -(-w.shape[0] // bh))
        if a >= b:
            continue
        sub = w[a * bh : b * bh]
        for x0, x1 in row_chunks(sub.shape[0], sub.shape[1], chunk_elems, bh):
            rr, cc = (score_bits(sub[x0:x1], bs, norm) == t).nonzero(as_tuple=True)
            keys = key(rr + (r0 + a + x0 // bh), cc + c0)
            hist += torch.bincount(keys, minlength=size)
    return hist


def shard_row_amax(
    shards: Sequence[Shard], shapes: Sequence[tuple[int, int]], reduce_max: Reduce | None
) -> list[Tensor]:
    """Each shard's rows' largest |w| over the whole table rows (all the shards holding a part of
    them, maximised over the processes by ``reduce_max``): the row-wise quantiser's scales of a
    column slice. Every process calls it with the same ``shapes``."""
    amax = [torch.zeros(n) for n, _ in shapes]
    for s in shards:
        w, r = s.weight.detach(), s.offset[0]
        for a, b in row_chunks(*w.shape, CHUNK_ELEMS) if w.shape[1] else ():
            rows = amax[s.table][r + a : r + b]
            torch.maximum(rows, w[a:b].abs().amax(1), out=rows)
    if reduce_max is not None:
        flat = torch.cat(amax)
        reduce_max(flat)
        amax = list(flat.split([n for n, _ in shapes]))
    return [amax[s.table][s.offset[0] : s.offset[0] + s.weight.shape[0]] for s in shards]
