"""One pruning threshold across all embedding tables (a "global" level), in bounded memory.

The reference prunes every table on its own: table i loses ``round(level * blocks_i)`` blocks. A
global level instead prunes the ``K = round(level * sum_i blocks_i)`` lowest block scores of all
tables together, ties (equal scores) broken by (table order, block index); tables whose blocks
score low lose more than the level, the others less. Scores, norms and block shapes are those of
:mod:`masks` / :mod:`series` (float32 tables only: one order over the score bits of all tables).

How, without concatenating the scores (540M (1, 1) blocks at the Kaggle size: 2 GiB of float32,
and a sort's int64 indices on top), with the counting passes of :mod:`series`:

1. per table, a histogram of the score bits' high 15 bits (256 KiB per table, all kept); their
   sum places every level's K-th lowest score in a high bin;
2. per table, a histogram of the low 16 bits of the blocks in those bins (one slot of 65536
   counters per distinct bin), summed over the tables as they come: every level's global
   threshold ``T`` (a score bit pattern), the number ``B`` of blocks scoring below it, and so
   ``P = K - B`` blocks equal to ``T`` that are pruned;
3. per table, the same histogram again, read at each ``T``: ``below_i`` and ``ties_i``. The ties
   go to the tables in order, ``m_i = min(ties_i, P - (ties of the tables before i))`` (>= 0),
   and table i loses ``k_i = below_i + m_i`` blocks.

Pass 3 repeats pass 2 instead of keeping every table's pass-2 histogram, which would take
tables x (distinct bins + 1) x 512 KiB (about 250 MiB for 26 tables and 18 levels); one more
counting pass costs about as much as pass 2. Memory: the pass-1 histograms, one summed pass-2
histogram plus one per worker, the chunk temporaries; nothing of table size.

Why per-table cuts give exactly the global mask. The global mask prunes the first ``K`` blocks
in (score, table, index) order: every block scoring below ``T``, and the first ``P`` blocks
scoring ``T`` in (table, index) order, i.e. in table i the first ``m_i`` of them by index.
Restricted to table i that is ``{score < T}`` plus the first ``m_i`` ties by index: ``k_i``
blocks, and they are the first ``k_i`` of table i in (score, index) order, because every block
below ``T`` comes before every tie at ``T`` in that order and the ties are ordered by index. So
"the k_i lowest blocks of table i, ties broken by index" (what :func:`series.cuts_for_counts`
and :func:`series.apply_cuts` compute) is the global mask on table i, for any scores.
:func:`global_cuts` builds those cuts directly from ``T`` (prune scores below ``T`` and the first
``m_i`` ties), and :func:`series.apply_cuts` checks on every apply that each table loses exactly
``k_i`` blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .masks import _check_args, _num_blocks
from .series import (
    _HI,
    FAST_CHUNK_ELEMS,
    SeriesCuts,
    TableCut,
    _hist_hi,
    _hist_lo,
    _map_tables,
    _series,
    _slot_lut,
)


def global_cuts(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Every table's cut at every global level of one (norm, block shape): 3 counting passes.

    ``apply_cuts(dense, series.for_level(level), norm, block_shape, out=...)`` prunes a global
    point. ``[c.k for c in series.for_level(level)]`` are the blocks each table loses; they sum
    to ``round(level * total blocks)``.
    """
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    for i, w in enumerate(ws):
        if w.dtype != torch.float32:
            raise ValueError(
                f"weights[{i}]: a global threshold needs float32 tables, got {w.dtype}"
            )
        for lv in levels:
            _check_args(w, lv, bs, norm, "stable")
    levels = [float(lv) for lv in levels]
    nbs = [_num_blocks(*w.shape, bs) for w in ws]
    total = sum(nbs)
    big_k = [round(lv * total) for lv in levels]  # Python round, as per table
    todo = [j for j, k in enumerate(big_k) if 0 < k < total]
    counts = {j: [(0 if big_k[j] <= 0 else nb, 0, 0) for nb in nbs] for j in range(len(levels))}
    thresholds: dict[int, int] = {}
    if todo:
        thresholds = _count(
            ws, norm, bs, [big_k[j] for j in todo], chunk_elems, workers, counts, todo
        )
    per_table = [
        [_cut(counts[j][i], nbs[i], thresholds.get(j, 0), levels[j]) for j in range(len(levels))]
        for i in range(len(ws))
    ]
    return _series(ws, norm, bs, levels, per_table)


def global_counts(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> dict[float, list[int]]:
    """For each global level, the number of blocks each table loses (in table order)."""
    series = global_cuts(
        weights, norm, block_shape, levels, chunk_elems=chunk_elems, workers=workers
    )
    return {lv: [c.k for c in cuts] for lv, cuts in series.cuts.items()}


def _count(
    ws, norm, bs, ks: list[int], chunk_elems, workers, counts: dict, todo: list[int]
) -> dict[int, int]:
    """Passes 1-3 for the non-trivial levels ``todo`` (global block counts ``ks``).

    Fills ``counts[j][i] = (k_i, m_i, ties_i)`` and returns ``{j: T}``.
    """
    hist1 = torch.stack(_map_tables(lambda i: _hist_hi(ws[i], bs, norm, chunk_elems), ws, workers))
    cum1 = torch.cumsum(hist1, 1)  # (tables, 2**15)
    del hist1
    gcum1 = cum1.sum(0)  # (2**15,) cumulative counts over all tables
    his = torch.searchsorted(gcum1, torch.tensor(ks, dtype=torch.int64)).tolist()  # first cum >= K
    slots, lut = _slot_lut(his)
    nslot = len(slots)
    gsum = torch.zeros(nslot + 1, 1 << _HI, dtype=torch.int64)
    lock = threading.Lock()

    def add(i: int) -> None:  # pass 2
        h = _hist_lo(ws[i], bs, norm, lut, nslot, chunk_elems)
        with lock:
            gsum.add_(h)

    _map_tables(add, ws, workers)
    gcum2 = torch.cumsum(gsum[:nslot], 1)  # (nslot, 65536)
    del gsum
    where = []  # per level: (slot, hi, lo, ties pruned in all)
    for k, hi in zip(ks, his):
        s = slots.index(hi)
        before = int(gcum1[hi - 1]) if hi > 0 else 0
        lo = int(torch.searchsorted(gcum2[s], torch.tensor(k - before, dtype=torch.int64)))
        below = before + (int(gcum2[s, lo - 1]) if lo > 0 else 0)
        where.append((s, hi, lo, k - below))

    def read(i: int) -> tuple[list[int], list[int]]:  # pass 3: below_i and ties_i per level
        h = _hist_lo(ws[i], bs, norm, lut, nslot, chunk_elems)[:nslot]
        c = torch.cumsum(h, 1)
        return [
            (int(cum1[i, hi - 1]) if hi > 0 else 0) + (int(c[s, lo - 1]) if lo > 0 else 0)
            for s, hi, lo, _ in where
        ], [int(h[s, lo]) for s, _, lo, _ in where]

    per_table = _map_tables(read, ws, workers)
    for n, (j, (s, hi, lo, left)) in enumerate(zip(todo, where)):
        for i, (below, ties) in enumerate(per_table):
            m = min(ties[n], left)  # ties go to the tables in order
            left -= m
            counts[j][i] = (below[n] + m, m, ties[n])
        if left:
            raise AssertionError(
                f"level {j}: {left} ties left over (tables changed during counting?)"
            )
    return {j: (hi << _HI) | lo for j, (s, hi, lo, _) in zip(todo, where)}


def _cut(count: tuple[int, int, int], nb: int, t: int, level: float) -> TableCut:
    """Table cut: prune score bits < t and the first m ties (== t): k blocks in all."""
    k, m, ties = count
    if k <= 0:
        return TableCut(k=0, num_blocks=nb, trivial="keep", level=level)
    if k >= nb:
        return TableCut(k=nb, num_blocks=nb, trivial="prune", level=level)
    return TableCut(
        k=k,
        num_blocks=nb,
        level=level,
        t=t,
        ties_pruned=m,
        ties_total=ties,
        tie_end=nb if m == ties else (0 if m == 0 else None),
    )
