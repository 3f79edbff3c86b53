"""One pruning threshold across all tables (a "global" level), in bounded memory.

A global level prunes the ``K = round(level * sum_i blocks_i)`` lowest block scores of all tables
together, ties broken by (table order, block index); scores, norms and blocks are the engine's
(:mod:`.prune`). :func:`global_cuts` gives it as per-table cuts for
:func:`~.prune.apply_cuts` (three counting passes per table, nothing of table size; float32
tables only). Why per-table cuts are exactly the global mask: ``docs/design.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .chunks import map_tables
from .prune import (
    CHUNK_ELEMS,
    LOW_BITS,
    SeriesCuts,
    TableCut,
    bins_of,
    check_table,
    count_at,
    high_counts,
    locate,
    low_counts,
    num_blocks,
)


def global_cuts(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Every table's cut at every global level of one (norm, block shape). The ``k`` of
    ``series.for_level(level)`` sum to ``round(level * total blocks)``. Raises ValueError on a
    table that is not float32 or a bad level, block shape or norm."""
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    for i, w in enumerate(ws):
        if w.dtype != torch.float32:
            raise ValueError(
                f"weights[{i}]: a global threshold needs float32 tables, got {w.dtype}"
            )
        for lv in levels:
            check_table(w, lv, bs, norm)
    nbs = [num_blocks(w.shape, bs) for w in ws]
    total = sum(nbs)
    big_k = {float(lv): round(float(lv) * total) for lv in levels}  # Python round, as per table
    todo = sorted({k for k in big_k.values() if 0 < k < total})
    per_k = {0: [TableCut(0, nb) for nb in nbs], total: [TableCut(nb, nb) for nb in nbs]}
    if todo:
        per_k.update(_cuts(ws, norm, bs, todo, nbs, chunk_elems, workers))
    return SeriesCuts(norm, bs, {lv: tuple(per_k[k]) for lv, k in big_k.items()})


def global_counts(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> dict[float, list[int]]:
    """For each global level, the number of blocks each table loses (in table order)."""
    kw = {"chunk_elems": chunk_elems, "workers": workers}
    series = global_cuts(weights, norm, block_shape, levels, **kw)
    return {lv: [c.k for c in cuts] for lv, cuts in series.cuts.items()}


def _cuts(ws, norm, bs, ks, nbs, chunk_elems, workers) -> dict[int, list[TableCut]]:
    """Per-table cuts for each global count ``K`` of ``ks`` (passes 1-3)."""
    kw = {"chunk_elems": chunk_elems}
    highs = map_tables(lambda i: high_counts(ws[i], norm, bs, **kw), ws, workers)  # pass 1
    high = torch.stack(highs).sum(0)
    bins = bins_of(high, ks)
    low = torch.zeros(len(bins), 1 << LOW_BITS, dtype=torch.int64)
    lock = threading.Lock()

    def add(i: int) -> None:  # pass 2: summed over the tables as they come
        counts = low_counts(ws[i], norm, bs, bins, **kw)
        with lock:
            low.add_(counts)

    map_tables(add, ws, workers)
    found = [locate(high, low, bins, k) for k in ks]  # (T, below, ties) of all tables

    def read(i: int) -> list[tuple[int, int]]:  # pass 3: each table's (below, ties) at each T
        counts = low_counts(ws[i], norm, bs, bins, **kw)
        return [count_at(highs[i], counts, bins, t) for t, _, _ in found]

    per_table = map_tables(read, ws, workers)
    out = {}
    for j, (k, (t, below, _)) in enumerate(zip(ks, found)):
        left, cuts = k - below, []  # ties pruned in all; they go to the tables in order
        for nb, at in zip(nbs, per_table):
            below_i, ties_i = at[j]
            m = min(ties_i, left)
            left -= m
            cuts.append(TableCut(below_i + m, nb, t, m, ties_i))
        if left:
            raise AssertionError(f"K={k}: {left} ties left over (tables changed while counting?)")
        out[k] = cuts
    return out
