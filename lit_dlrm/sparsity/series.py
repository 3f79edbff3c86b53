"""In-place pruning and cuts shared by every level of a (norm, block shape) series.

Same masks as :mod:`lit_dlrm.sparsity.masks` (``ties="stable"``: the ``k = round(level *
num_blocks)`` lowest block scores, ties broken by block index), computed with less memory traffic:

* **Cuts for many levels at once** (:func:`cuts_for_levels`): a block's rank does not depend on
  the level, so one histogram of the scores' high 16 bits (pass 1) places every level's k-th
  score in a bin, and one more pass histograms the low 16 bits of the blocks in those bins, all
  levels together (each bin gets a slot of 65536 counters; other blocks go to a dump slot). Two
  counting passes give every level's threshold ``t`` (a score bit pattern), how many blocks
  score below it and how many of the blocks equal to ``t`` are pruned.
* **Given block counts** (:func:`cuts_for_counts`): the same two passes for per-table counts
  ``k`` instead of levels (e.g. a global threshold's, :mod:`global_threshold`).
* **One apply pass per level** (:func:`apply_cuts`): per row chunk, score bits ``b`` (int32),
  then ``keep = -1 if b > u else 0`` with ``u = t`` (ties pruned) or ``t - 1`` (ties kept) via
  ``(b - u - 1) >> 31`` and a not, then ``dst_bits = src_bits & keep`` (+0.0 zeros). Only
  integer ops, no bool or table-sized temporaries; ``dst`` may be ``src`` (in place). Before the
  chunk where the ``ties_pruned``-th tie falls, ties are pruned; after it they are kept; that
  chunk is split at the tie's index (found lazily, once, and remembered in the cut).
* **Self-check**: every apply counts the blocks it prunes. A mask of the form ``{b < t} U {b ==
  t and index < pos}`` that prunes exactly ``k`` blocks *is* the stable-sort answer for the
  tables it just read, whatever they are; so a cut reused on tables that changed is either still
  exact or detected (:class:`StaleCut`), never silently wrong.

Scores: L1 (1, 1) is the float's bits with the sign cleared (= |w|); L2 w*w; for (1, bw) blocks
over a table whose width is a multiple of bw the block score is ``((s0 + s1) + s2) + ... / bw``
in float32, the order ``F.avg_pool2d``'s CPU kernel uses (checked bit-for-bit against it on first
use; on a mismatch, and for taller or partial blocks, ``avg_pool2d`` itself is used).

float32 tables only on the fast path; other dtypes fall back to :func:`masks.prune` (a copy per
table). ``ties="torch"`` (the running machine's unstable sort among ties) falls back to the mask
generator of :mod:`masks` when a tie group straddles a cut.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from lit_dlrm.sweep.grid import GridPoint

from .masks import _check_args, _keep_chunks, _num_blocks, _score_bits, prune, torch_threads

FAST_CHUNK_ELEMS = 1 << 18  # 1 MiB of float32: chunk temporaries stay in L2
_KEY_BUF = 1 << 22  # keys gathered before one bincount in pass 2 (16 MiB int32)
_HI = 16  # bits of the first digit's shift
_POOL_ORDER_OK: bool | None = None


class StaleCut(RuntimeError):
    """A cut applied to tables it was not computed from pruned the wrong number of blocks."""


@dataclass
class TableCut:
    """Where level's k lowest blocks of one table end (see the module docstring).

    ``trivial``: ``"keep"`` (k = 0), ``"prune"`` (k = all blocks), ``"fallback"`` (not float32)
    or None (a real cut). Prune the
    blocks with score bits ``< t`` and the first ``ties_pruned`` blocks with bits ``== t``;
    ``tie_end`` (found by the first apply) is the block index just past the last pruned tie.
    """

    k: int
    num_blocks: int
    trivial: str | None = None  # "keep", "prune", "fallback" (not float32: masks.prune) or None
    level: float = 0.0
    t: int = 0
    ties_pruned: int = 0
    ties_total: int = 0
    tie_end: int | None = None


@dataclass
class SeriesCuts:
    """Per-table cuts of one (norm, block shape) for several levels: ``cuts[level][table]``."""

    norm: str
    block_shape: tuple[int, int]
    shapes: tuple[tuple[int, int], ...]
    cuts: dict[float, list[TableCut]] = field(default_factory=dict)
    key: tuple | None = None  # free for callers' cache bookkeeping

    def for_level(self, level: float) -> list[TableCut]:
        return self.cuts[float(level)]


# ------------------------------------------------------------------------------------ scores


def _pool_order_ok() -> bool:
    """Does summing the block left to right, then dividing, match avg_pool2d bit for bit?"""
    global _POOL_ORDER_OK
    if _POOL_ORDER_OK is None:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(4096, 16, generator=g) * torch.exp(torch.randn(4096, 16, generator=g) * 8)
        ok = True
        for bw in (2, 3, 4, 8):
            for s in (w.abs(), w * w):
                s = s[:, : 16 - 16 % bw].contiguous()
                ref = F.avg_pool2d(s[None, None], (1, bw), (1, bw), ceil_mode=True)[0, 0]
                ok &= torch.equal(
                    _sum_blocks(s, bw).view(torch.int32), ref.contiguous().view(torch.int32)
                )
        _POOL_ORDER_OK = bool(ok)
    return _POOL_ORDER_OK


def _sum_blocks(s: torch.Tensor, bw: int) -> torch.Tensor:
    """(r, d) -> (r, d // bw): ((s0 + s1) + s2 ...) / bw per block, float32."""
    r, d = s.shape
    s3 = s.view(r, d // bw, bw)
    x = s3[..., 0] + s3[..., 1] if bw > 1 else s3[..., 0].clone()
    for j in range(2, bw):
        x += s3[..., j]
    if bw > 1:
        x /= bw
    return x


def _bits(w: torch.Tensor, block_shape: tuple[int, int], norm: str) -> torch.Tensor:
    """Block score bits of a float32 row chunk `w: (r, d)` -> fresh int32 (blocks_r, nbw), >= 0."""
    bh, bw = block_shape
    r, d = w.shape
    if block_shape == (1, 1):
        if norm == "L1":
            return w.view(torch.int32) & 0x7FFFFFFF  # the bits of |w|
        return (w * w).view(torch.int32).bitwise_and_(0x7FFFFFFF)
    if bh == 1 and d % bw == 0 and _pool_order_ok():
        s = torch.abs(w) if norm == "L1" else w * w
        return _sum_blocks(s, bw).view(torch.int32).bitwise_and_(0x7FFFFFFF)
    nbw = -(-d // bw)
    return _score_bits(w, block_shape, norm).view(-1, nbw)


def _row_chunks(n: int, d: int, bh: int, chunk_elems: int):
    rows = max(1, chunk_elems // max(d, 1))
    rows = max(bh, rows - rows % bh)
    for r0 in range(0, n, rows):
        yield r0, min(n, r0 + rows)


# ------------------------------------------------------------------------------------ counting


def _hist_hi(
    w: torch.Tensor, block_shape: tuple[int, int], norm: str, chunk_elems: int
) -> torch.Tensor:
    """Counting pass 1: histogram of the score bits' high digit -> int64 (2**15,) (bits < 2**31)."""
    n, d = w.shape
    hist1 = torch.zeros(1 << (31 - _HI), dtype=torch.int64)
    for r0, r1 in _row_chunks(n, d, block_shape[0], chunk_elems):
        b = _bits(w[r0:r1], block_shape, norm)
        hist1 += torch.bincount(b.view(-1).bitwise_right_shift_(_HI), minlength=hist1.numel())
    return hist1


def _slot_lut(bins: Sequence[int]) -> tuple[list[int], torch.Tensor]:
    """Distinct high-digit bins (sorted) and a lookup high digit -> slot (others: the dump slot)."""
    slots = sorted(set(bins))
    lut = torch.full((1 << (31 - _HI),), len(slots), dtype=torch.int32)
    lut[torch.tensor(slots, dtype=torch.int64)] = torch.arange(len(slots), dtype=torch.int32)
    return slots, lut


def _hist_lo(
    w: torch.Tensor,
    block_shape: tuple[int, int],
    norm: str,
    lut: torch.Tensor,
    nslot: int,
    chunk_elems: int,
) -> torch.Tensor:
    """Counting pass 2: histogram of (slot, low digit) -> int64 (nslot + 1, 2**16); last = dump.

    Keys are gathered in a buffer between bincounts.
    """
    n, d = w.shape
    nb = _num_blocks(n, d, block_shape)
    nbins = (nslot + 1) << _HI
    hist2 = torch.zeros(nbins, dtype=torch.int64)
    buf = torch.empty(min(_KEY_BUF, nb), dtype=torch.int32)
    fill = 0
    for r0, r1 in _row_chunks(n, d, block_shape[0], chunk_elems):
        b = _bits(w[r0:r1], block_shape, norm).view(-1)
        m = b.numel()
        if fill + m > buf.numel():
            hist2 += torch.bincount(buf[:fill], minlength=nbins)
            fill = 0
        key = buf[fill : fill + m]
        torch.index_select(lut, 0, b >> _HI, out=key)
        key.bitwise_left_shift_(_HI).bitwise_or_(b.bitwise_and_((1 << _HI) - 1))
        fill += m
    if fill:
        hist2 += torch.bincount(buf[:fill], minlength=nbins)
    return hist2.view(nslot + 1, 1 << _HI)


def _table_cuts(
    w: torch.Tensor,
    norm: str,
    block_shape: tuple[int, int],
    levels: Sequence[float],
    chunk_elems: int,
    ks: Sequence[int] | None = None,
) -> list[TableCut]:
    """Cuts of one float32 table for every level: 2 counting passes (0 if all levels trivial).

    Level j prunes ``ks[j]`` blocks if ``ks`` is given, else ``round(levels[j] * num_blocks)``.
    """
    n, d = w.shape
    nb = _num_blocks(n, d, block_shape)
    out: list[TableCut] = []
    todo = []
    for j, lv in enumerate(levels):
        k = round(float(lv) * nb) if ks is None else int(ks[j])
        if w.dtype != torch.float32:
            # masks.prune takes a level: k / nb gives back k (|k/nb*nb - k| << 0.5)
            out.append(
                TableCut(
                    k=k,
                    num_blocks=nb,
                    trivial="fallback",
                    level=float(lv) if ks is None else k / nb,
                )
            )
        elif k <= 0:  # levels are in [0, 1]: level 0 <=> k = 0, level 1 <=> k = nb
            out.append(TableCut(k=0, num_blocks=nb, trivial="keep", level=float(lv)))
        elif k >= nb:
            out.append(TableCut(k=nb, num_blocks=nb, trivial="prune", level=float(lv)))
        else:
            out.append(TableCut(k=k, num_blocks=nb, level=float(lv)))
            todo.append(out[-1])
    if not todo:
        return out
    hist1 = _hist_hi(w, block_shape, norm, chunk_elems)
    cum1 = torch.cumsum(hist1, 0)
    ks_todo = torch.tensor([c.k for c in todo], dtype=torch.int64)
    bins = torch.searchsorted(cum1, ks_todo).tolist()  # first bin with cum >= k
    slots, lut = _slot_lut(bins)
    hist2 = _hist_lo(w, block_shape, norm, lut, len(slots), chunk_elems)
    cum2 = torch.cumsum(hist2[: len(slots)], 1)  # (nslot, 65536)
    for cut, hi in zip(todo, bins):
        before = int(cum1[hi - 1]) if hi > 0 else 0
        s = slots.index(hi)
        rank = cut.k - before
        lo = int(torch.searchsorted(cum2[s], torch.tensor(rank, dtype=torch.int64)))
        below = before + (int(cum2[s, lo - 1]) if lo > 0 else 0)
        cut.t = (hi << _HI) | lo
        cut.ties_total = int(hist2[s, lo])
        cut.ties_pruned = cut.k - below
        if cut.ties_pruned == cut.ties_total:
            cut.tie_end = nb
        elif cut.ties_pruned == 0:
            cut.tie_end = 0
    return out


def _pool(workers: int | None):
    return workers or max(1, min(2, os.cpu_count() or 1))


def _map_tables(fn, weights: Sequence[torch.Tensor], workers: int | None) -> list:
    """fn(i) for every table, largest first over `workers` threads, torch 1-threaded inside."""
    order = sorted(range(len(weights)), key=lambda i: weights[i].numel(), reverse=True)
    out: list = [None] * len(weights)
    inference, grad, task = torch.is_inference_mode_enabled(), torch.is_grad_enabled(), fn

    def fn(i: int):  # grad and inference modes are thread-local: carry the caller's
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return task(i)

    with torch_threads(1):
        if _pool(workers) == 1:
            for i in order:
                out[i] = fn(i)
        else:
            with ThreadPoolExecutor(max_workers=_pool(workers)) as pool:
                for i, r in zip(order, pool.map(fn, order)):
                    out[i] = r
    return out


def cuts_for_levels(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Every table's cut for every level of one (norm, block shape): 2 counting passes per table.

    Tables that the fast path does not cover (not float32, blocks taller than 1 row or not
    dividing the width) get their cuts from the same two passes over avg_pool2d scores.
    """
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    for w in ws:
        for lv in levels:
            _check_args(w, lv, bs, norm, "stable")
    levels = [float(lv) for lv in levels]

    def one(i: int) -> list[TableCut]:
        return _table_cuts(ws[i], norm, bs, levels, chunk_elems)

    return _series(ws, norm, bs, levels, _map_tables(one, ws, workers))


def cuts_for_counts(
    weights: Sequence[torch.Tensor],
    norm: str,
    block_shape: Sequence[int],
    counts_by_level: Mapping[float, Sequence[int]],
    *,
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Like :func:`cuts_for_levels`, but table i loses ``counts_by_level[level][i]`` blocks.

    The level is only a label here (e.g. a global level, :mod:`global_threshold`); each table's
    mask is its ``k`` lowest blocks, ties broken by block index. ``apply_cuts(dense,
    series.for_level(level), ...)`` applies them. 2 counting passes per table.
    """
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    levels = [float(lv) for lv in counts_by_level]
    ks = [list(counts_by_level[lv]) for lv in counts_by_level]  # (levels, tables)
    for w in ws:
        _check_args(w, 0.0, bs, norm, "stable")
    for lv, row in zip(levels, ks):
        if len(row) != len(ws):
            raise ValueError(f"counts_by_level[{lv}]: {len(row)} counts for {len(ws)} tables")
        for i, (k, w) in enumerate(zip(row, ws)):
            nb = _num_blocks(*w.shape, bs)
            if not 0 <= int(k) <= nb:
                raise ValueError(
                    f"counts_by_level[{lv}][{i}]: {k} blocks is outside [0, {nb}] "
                    f"(table {i} has {nb} blocks of {bs})"
                )

    def one(i: int) -> list[TableCut]:
        return _table_cuts(ws[i], norm, bs, levels, chunk_elems, ks=[row[i] for row in ks])

    return _series(ws, norm, bs, levels, _map_tables(one, ws, workers))


def _series(ws, norm, bs, levels, per_table: list[list[TableCut]]) -> SeriesCuts:
    """per_table[i][j] (table i, level j) -> SeriesCuts with cuts[level j] = [table 0, 1, ...]."""
    series = SeriesCuts(norm, bs, tuple(tuple(w.shape) for w in ws))
    for j, lv in enumerate(levels):
        series.cuts[lv] = [cuts[j] for cuts in per_table]
    return series


# ------------------------------------------------------------------------------------ apply


def _keep_bits(x: torch.Tensor, keep_ties: bool) -> torch.Tensor:
    """In place: x = bits - t -> -1 (keep) where x > 0, or x >= 0 with keep_ties; else 0.

    bits and t are in [0, 2**31), so x does not overflow and its sign bit says x < 0.
    """
    if not keep_ties:
        x.sub_(1)
    return x.bitwise_right_shift_(31).bitwise_not_()


def _write(
    src: torch.Tensor, dst: torch.Tensor, keep: torch.Tensor, block_shape, signed_zeros: bool
) -> None:
    """dst = src where keep (int32 -1/0 per block, (rb, nbw)) else zero, for one row chunk."""
    r, d = src.shape
    bh, bw = block_shape
    if bh == 1 and d % bw == 0:
        s3, d3, k3 = src.view(r, d // bw, bw), dst.view(r, d // bw, bw), keep.view(r, d // bw, 1)
    else:  # general blocks: expand the block mask, cropping partial blocks
        k = keep
        if bw > 1:
            k = k.repeat_interleave(bw, dim=1)[:, :d]
        if bh > 1:
            k = k.repeat_interleave(bh, dim=0)[:r]
        s3, d3, k3 = src, dst, k
    if signed_zeros:  # the reference's weight * mask: -0.0 for pruned negatives, NaN for inf
        torch.mul(s3, k3.neg().to(src.dtype), out=d3)
    else:
        torch.bitwise_and(s3.view(torch.int32), k3, out=d3.view(torch.int32))


def _apply_table(
    src: torch.Tensor,
    dst: torch.Tensor,
    cut: TableCut,
    norm: str,
    block_shape: tuple[int, int],
    signed_zeros: bool,
    chunk_elems: int,
) -> None:
    n, d = src.shape
    if cut.trivial == "keep":
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)
        return
    if cut.trivial == "prune":
        if signed_zeros:
            torch.mul(src, 0, out=dst)
        else:
            dst.zero_()
        return
    nbw = -(-d // block_shape[1])
    t = cut.t
    keep_ties = False
    seen = 0  # ties met so far (while tie_end is unknown)
    tie_end = cut.tie_end
    pruned = 0
    for r0, r1 in _row_chunks(n, d, block_shape[0], chunk_elems):
        x = _bits(src[r0:r1], block_shape, norm).sub_(t)  # (rb, nbw): score bits - t
        b0 = (r0 // block_shape[0]) * nbw
        b1 = b0 + x.numel()
        split = None
        if tie_end is None:  # locate the ties_pruned-th tie lazily
            c = x.numel() - int(torch.count_nonzero(x))  # ties in this chunk
            if seen + c < cut.ties_pruned:
                seen += c
                keep_ties = False
            else:
                j = int((x.view(-1) == 0).nonzero()[cut.ties_pruned - seen - 1])
                tie_end = b0 + j + 1
                cut.tie_end = tie_end
                split = j + 1
        elif b1 <= tie_end:
            keep_ties = False
        elif b0 >= tie_end:
            keep_ties = True
        else:
            split = tie_end - b0
        if split is not None:
            eq = x.view(-1)[:split] == 0
            b = _keep_bits(x, True)
            b.view(-1)[:split].masked_fill_(eq, 0)
        else:
            b = _keep_bits(x, keep_ties)
        pruned += b.numel() + int(b.sum())  # keep = -1
        _write(src[r0:r1], dst[r0:r1], b, block_shape, signed_zeros)
    if tie_end is None or pruned != cut.k:
        raise StaleCut(f"cut for k={cut.k} pruned {pruned} blocks: tables changed since the cut")


def apply_cuts(
    weights: Sequence[torch.Tensor],
    cuts: Sequence[TableCut],
    norm: str,
    block_shape: Sequence[int],
    out: Sequence[torch.Tensor] | None = None,
    signed_zeros: bool = False,
    *,
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> list[torch.Tensor]:
    """Prune each table with its cut: into `out` (same shapes) or, if None, in place.

    One pass per table: reads the table once and writes its destination once. Raises
    `StaleCut` when a cut does not prune exactly k blocks of the tables it reads (they changed
    since the cut was computed); out-of-place, `weights` are untouched then.
    Tables that are not float32 go through `masks.prune` (a copy).
    """
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    dst = ws if out is None else [o.detach() for o in out]

    def one(i: int) -> torch.Tensor:
        w, o, cut = ws[i], dst[i], cuts[i]
        if cut.trivial == "fallback":
            o.copy_(prune(w, cut.level, bs, norm, signed_zeros, threads=None))
            return o
        _apply_table(w, o, cut, norm, bs, signed_zeros, chunk_elems)
        return o

    return _map_tables(one, ws, workers)


def prune_tables_(
    weights: Sequence[torch.Tensor],
    point: GridPoint,
    signed_zeros: bool = False,
    *,
    ties: str = "stable",
    chunk_elems: int = FAST_CHUNK_ELEMS,
    workers: int | None = None,
) -> list[torch.Tensor]:
    """Prune each table IN PLACE at one grid point (same masks as `masks.prune_tables`).

    2 counting passes and 1 apply pass per table; extra memory is O(chunk) per worker plus the
    counting buffers (~16 MiB + 1.2 MiB of histograms per worker). Returns `weights`' tensors.
    `ties="torch"`: the reference machine's own tie order; where a tie group straddles the cut
    the table's mask comes from `masks`' sort-based generator (12 bytes per block, that table).
    """
    bs = tuple(int(x) for x in point.sparse_block_shape)
    ws = [w.detach() for w in weights]
    for w in ws:
        _check_args(w, point.sparsity_level, bs, point.norm, ties)

    def one(i: int) -> torch.Tensor:
        w = ws[i]
        (cut,) = _table_cuts(w, point.norm, bs, [point.sparsity_level], chunk_elems)
        if cut.trivial == "fallback":
            w.copy_(
                prune(
                    w, point.sparsity_level, bs, point.norm, signed_zeros, ties=ties, threads=None
                )
            )
            return w
        if ties == "torch" and cut.trivial is None and 0 < cut.ties_pruned < cut.ties_total:
            _apply_torch_ties(w, point, bs, signed_zeros)
            return w
        _apply_table(w, w, cut, point.norm, bs, signed_zeros, chunk_elems)
        return w

    return _map_tables(one, ws, workers)


def _apply_torch_ties(w: torch.Tensor, point: GridPoint, bs, signed_zeros: bool) -> None:
    zero = torch.zeros((), dtype=w.dtype)
    for r0, keep in _keep_chunks(w, point.sparsity_level, bs, point.norm, "torch", 1 << 20):
        part = w[r0 : r0 + keep.shape[0]]
        if signed_zeros:
            part.mul_(keep)
        else:
            torch.where(keep, part, zero, out=part)
