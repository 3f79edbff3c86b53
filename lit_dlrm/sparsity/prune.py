"""The pruning engine: PyTorch ``DataNormSparsifier``'s block masks, from counting passes.

A table ``w: (n, d)`` is split into ``block_shape`` blocks laid from index 0 (partial blocks at
the edges). A block's score is the mean of ``|w|`` (``"L1"``) or ``w * w`` (``"L2"``) over it,
bit for bit the reference's ``F.avg_pool2d`` (ceil mode). Pruning ``k`` blocks zeroes the ``k``
lowest scores, ties broken by block index (row-major); a level prunes ``round(level * blocks)``.

* :func:`cuts_for_levels` / :func:`cuts_for_counts`: the cuts (:class:`TableCut`, frozen) of
  many levels of one (norm, block shape), two counting passes per table for all of them;
* :func:`apply_cuts`: one pass per table into given buffers or in place; raises :class:`StaleCut`
  when a cut does not prune exactly its ``k`` blocks of the tables it reads (so a reused cut is
  either exact or refused);
* :func:`prune`: cuts and apply in one call;
* :func:`score_bits`, :func:`high_counts`, :func:`low_counts`, :func:`bins_of`, :func:`locate`,
  :func:`count_at`: the counting passes, for cuts built elsewhere (:mod:`.global_threshold`,
  :mod:`.sharded`).

Float tables (float32 on the fast path; NaN unsupported). Temporaries are O(``chunk_elems``) per
worker plus ~17 MiB of counters; nothing of table size. Reasoning: ``docs/design.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .chunks import map_tables, row_chunks

NORMS = ("L1", "L2")
CHUNK_ELEMS = 1 << 18  # 1 MiB of float32: chunk temporaries stay in L2
LOW_BITS = 16  # a score's bits are (high digit << LOW_BITS) | low digit; high < 2**15
_KEY_BUF = 1 << 22  # pass-2 keys gathered before one bincount (16 MiB of int32)
_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}
_INT[torch.bfloat16] = torch.int16
_sums_ok: bool | None = None


class StaleCut(RuntimeError):
    """A cut applied to tables it was not computed from pruned the wrong number of blocks."""


@dataclass(frozen=True)
class TableCut:
    """Prune ``k`` of a table's ``num_blocks`` blocks: those whose score bits are ``< t``, and
    the first ``ties_pruned`` by index of the ``ties_total`` equal to ``t``. ``k == 0`` keeps
    every block and ``k == num_blocks`` prunes every block, whatever ``t``."""

    k: int
    num_blocks: int
    t: int = 0
    ties_pruned: int = 0
    ties_total: int = 0


@dataclass(frozen=True)
class SeriesCuts:
    """The cuts of several levels of one (norm, block shape): ``cuts[level][table]``."""

    norm: str
    block_shape: tuple[int, int]
    cuts: dict[float, tuple[TableCut, ...]]

    def for_level(self, level: float) -> tuple[TableCut, ...]:
        return self.cuts[float(level)]


def num_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> int:
    """Blocks of ``block_shape`` over a table of ``shape`` (partial blocks count)."""
    return -(-shape[0] // block_shape[0]) * -(-shape[1] // block_shape[1])


def check_table(
    weight: Tensor, level: float, block_shape: Sequence[int], norm: str
) -> tuple[int, int]:
    """Validate one table's arguments -> ``(height, width)``; ValueError names the bad one."""
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D table (rows, dim), got {tuple(weight.shape)}")
    if weight.dtype not in _INT:
        raise ValueError(f"weight: unsupported dtype {weight.dtype} (expected a float dtype)")
    if not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"level: {level} is outside [0, 1]")
    if norm not in NORMS:
        raise ValueError(f"norm: unknown norm {norm!r} (expected L1 or L2)")
    bh, bw = (int(x) for x in block_shape)
    n, d = weight.shape
    if bh < 1 or bw < 1 or bh > max(n, 1) or bw > max(d, 1):
        raise ValueError(
            f"block_shape: {(bh, bw)} does not fit a table of shape {(n, d)} "
            f"(expected 1 <= height <= rows and 1 <= width <= dim)"
        )
    return bh, bw


# ------------------------------------------------------------------------------------ scores


def block_scores(weight: Tensor, norm: str, block_shape: Sequence[int]) -> Tensor:
    """Block scores of ``weight: (r, d)`` -> a new ``(ceil(r / bh), ceil(d / bw))`` tensor,
    bit-identical to ``F.avg_pool2d(score, block_shape, block_shape, ceil_mode=True)``."""
    bh, bw = block_shape
    s = torch.abs(weight) if norm == "L1" else weight * weight
    if bh == bw == 1:
        return s  # a 1x1 average is the identity
    if bh == 1 and weight.shape[1] % bw == 0 and weight.dtype == torch.float32 and sums_ok():
        return _sum_blocks(s, bw)
    pooled = F.avg_pool2d(s[None, None], (bh, bw), (bh, bw), ceil_mode=True)
    return pooled[0, 0]


def sums_ok() -> bool:
    """Does ``((s0 + s1) + s2 ...) / bw`` equal ``F.avg_pool2d``'s float32 block means bit for
    bit on this machine (checked once)? If not, :func:`block_scores` calls ``avg_pool2d``."""
    global _sums_ok
    if _sums_ok is None:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(4096, 16, generator=g) * torch.exp(torch.randn(4096, 16, generator=g) * 8)
        ok = True
        for bw in (2, 3, 4, 8):
            for s in (w.abs(), w * w):
                s = s[:, : 16 - 16 % bw].contiguous()
                ref = F.avg_pool2d(s[None, None], (1, bw), (1, bw), ceil_mode=True)[0, 0]
                ok &= torch.equal(_sum_blocks(s, bw).view(torch.int32), ref.view(torch.int32))
        _sums_ok = bool(ok)
    return _sums_ok


def _sum_blocks(s: Tensor, bw: int) -> Tensor:
    """(r, d) -> (r, d // bw): ``((s0 + s1) + s2 ...) / bw`` per block, left to right."""
    s3 = s.view(s.shape[0], -1, bw)
    x = s3[..., 0].clone()
    for j in range(1, bw):
        x += s3[..., j]
    return x.div_(bw)


def score_bits(w: Tensor, block_shape: tuple[int, int], norm: str) -> Tensor:
    """Block scores of a row chunk as new non-negative integers in the scores' order:
    int32 (int64 for float64) ``(blocks_r, nbw)``."""
    if block_shape == (1, 1) and norm == "L1" and w.dtype == torch.float32:
        return w.view(torch.int32) & 0x7FFFFFFF  # the bits of |w|
    itype = _INT[w.dtype]
    bits = block_scores(w, norm, block_shape).contiguous().view(itype)
    bits = bits.bitwise_and_(torch.iinfo(itype).max)  # -NaN -> NaN; order kept
    return bits.to(torch.int32) if itype == torch.int16 else bits


# ------------------------------------------------------------------------------------ counting


def high_counts(
    weight: Tensor, norm: str, block_shape: tuple[int, int], *, chunk_elems: int = CHUNK_ELEMS
) -> Tensor:
    """Counting pass 1: blocks per high digit of the score bits -> int64 ``(2**15,)``."""
    n, d = weight.shape
    hist = torch.zeros(1 << (31 - LOW_BITS), dtype=torch.int64)
    for r0, r1 in row_chunks(n, d, chunk_elems, block_shape[0]):
        b = score_bits(weight[r0:r1], block_shape, norm).view(-1)
        hist += torch.bincount(b.bitwise_right_shift_(LOW_BITS), minlength=hist.numel())
    return hist


def low_counts(
    weight: Tensor,
    norm: str,
    block_shape: tuple[int, int],
    bins: Sequence[int],
    *,
    chunk_elems: int = CHUNK_ELEMS,
) -> Tensor:
    """Counting pass 2: of the blocks whose high digit is ``bins[j]`` (sorted, distinct), how
    many have each low digit -> int64 ``(len(bins), 2**16)``."""
    n, d = weight.shape
    slots = len(bins)
    lut = torch.full((1 << (31 - LOW_BITS),), slots, dtype=torch.int32)  # others: a dump slot
    lut[torch.tensor(list(bins), dtype=torch.int64)] = torch.arange(slots, dtype=torch.int32)
    size = (slots + 1) << LOW_BITS
    hist = torch.zeros(size, dtype=torch.int64)
    buf = torch.empty(min(_KEY_BUF, num_blocks(weight.shape, block_shape)), dtype=torch.int32)
    fill = 0
    for r0, r1 in row_chunks(n, d, chunk_elems, block_shape[0]):
        b = score_bits(weight[r0:r1], block_shape, norm).view(-1)
        if fill + b.numel() > buf.numel():
            hist += torch.bincount(buf[:fill], minlength=size)
            fill = 0
        key = buf[fill : fill + b.numel()]
        torch.index_select(lut, 0, b >> LOW_BITS, out=key)
        key.bitwise_left_shift_(LOW_BITS).bitwise_or_(b.bitwise_and_((1 << LOW_BITS) - 1))
        fill += b.numel()
    hist += torch.bincount(buf[:fill], minlength=size)
    return hist.view(slots + 1, 1 << LOW_BITS)[:slots]


def bins_of(high: Tensor, ks: Sequence[int]) -> list[int]:
    """The high digits (sorted, distinct) of the ``k``-th lowest scores, from pass-1 counts."""
    at = torch.searchsorted(high.cumsum(0), torch.tensor(list(ks), dtype=torch.int64))
    return sorted(set(at.tolist()))


def locate(high: Tensor, low: Tensor, bins: Sequence[int], k: int) -> tuple[int, int, int]:
    """The ``k``-th lowest score (``1 <= k <= blocks``) -> ``(t, below, ties)``: its bits, the
    blocks scoring below it and those equal to it. ``bins`` must hold its high digit."""
    cum = high.cumsum(0)
    hi = int(torch.searchsorted(cum, torch.tensor(k)))
    rank = k - (int(cum[hi - 1]) if hi else 0)
    lo = int(torch.searchsorted(low[list(bins).index(hi)].cumsum(0), torch.tensor(rank)))
    t = (hi << LOW_BITS) | lo
    return (t, *count_at(high, low, bins, t))


def count_at(high: Tensor, low: Tensor, bins: Sequence[int], t: int) -> tuple[int, int]:
    """Blocks scoring below the bits ``t`` and equal to them -> ``(below, ties)``."""
    hi, lo = t >> LOW_BITS, t & ((1 << LOW_BITS) - 1)
    row = low[list(bins).index(hi)]
    return int(high[:hi].sum()) + int(row[:lo].sum()), int(row[lo])


def _table_cuts(
    w: Tensor, norm: str, bs: tuple[int, int], ks: Sequence[int], chunk_elems: int
) -> list[TableCut]:
    """The cut of one table for each of ``ks``: two counting passes (none if all are trivial)."""
    nb = num_blocks(w.shape, bs)
    todo = sorted({int(k) for k in ks if 0 < k < nb})
    found = {}
    if todo and w.dtype == torch.float64:  # 63-bit scores: one sort instead of two passes
        chunks = row_chunks(*w.shape, chunk_elems, bs[0])
        s = torch.cat([score_bits(w[a:b], bs, norm).view(-1) for a, b in chunks]).sort().values
        for k in todo:
            t = s[k - 1]
            below = int(torch.searchsorted(s, t))
            found[k] = (int(t), below, int(torch.searchsorted(s, t, right=True)) - below)
    elif todo:
        high = high_counts(w, norm, bs, chunk_elems=chunk_elems)
        bins = bins_of(high, todo)
        low = low_counts(w, norm, bs, bins, chunk_elems=chunk_elems)
        found = {k: locate(high, low, bins, k) for k in todo}
    cuts = []
    for k in ks:
        t, below, ties = found.get(int(k), (0, int(k), 0))
        cuts.append(TableCut(int(k), nb, t, int(k) - below, ties))
    return cuts


def cuts_for_counts(
    weights: Sequence[Tensor],
    norm: str,
    block_shape: Sequence[int],
    counts_by_level: Mapping[float, Sequence[int]],
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Cuts where table ``i`` loses ``counts_by_level[level][i]`` blocks (the level is a label):
    its ``k`` lowest, ties broken by index. Raises ValueError on a count outside [0, blocks]."""
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    for w in ws:
        check_table(w, 0.0, bs, norm)
    levels = [float(lv) for lv in counts_by_level]
    ks = [list(counts) for counts in counts_by_level.values()]  # (levels, tables)
    for lv, row in zip(levels, ks):
        if len(row) != len(ws):
            raise ValueError(f"counts_by_level[{lv}]: {len(row)} counts for {len(ws)} tables")
        for i, (k, w) in enumerate(zip(row, ws)):
            nb = num_blocks(w.shape, bs)
            if not 0 <= int(k) <= nb:
                raise ValueError(
                    f"counts_by_level[{lv}][{i}]: {k} blocks is outside [0, {nb}] "
                    f"(table {i} has {nb} blocks of {bs})"
                )

    def one(i: int) -> list[TableCut]:
        return _table_cuts(ws[i], norm, bs, [row[i] for row in ks], chunk_elems)

    per_table = map_tables(one, ws, workers)
    cuts = {lv: tuple(table[j] for table in per_table) for j, lv in enumerate(levels)}
    return SeriesCuts(norm, bs, cuts)


def cuts_for_levels(
    weights: Sequence[Tensor],
    norm: str,
    block_shape: Sequence[int],
    levels: Sequence[float],
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> SeriesCuts:
    """Every table's cut at every level: table ``i`` loses ``round(level * blocks_i)`` blocks.
    Raises ValueError (naming the argument) on a bad table, level, block shape or norm."""
    for w in weights:
        for lv in levels:
            check_table(w, lv, block_shape, norm)
    counts = {
        float(lv): [round(float(lv) * num_blocks(w.shape, block_shape)) for w in weights]
        for lv in levels
    }
    return cuts_for_counts(
        weights, norm, block_shape, counts, chunk_elems=chunk_elems, workers=workers
    )


# ------------------------------------------------------------------------------------ apply


def _keep_bits(x: Tensor, keep_ties: bool) -> Tensor:
    """In place: ``x = bits - t`` -> -1 (keep) where ``x > 0`` (``x >= 0`` with ``keep_ties``),
    else 0. ``bits`` and ``t`` are non-negative, so ``x`` cannot overflow."""
    if not keep_ties:
        x.sub_(1)
    return x.bitwise_right_shift_(x.element_size() * 8 - 1).bitwise_not_()


def _write(src: Tensor, dst: Tensor, keep: Tensor, bs, signed_zeros: bool) -> None:
    """``dst = src`` where ``keep`` (-1/0 per block, ``(rb, nbw)``) else zero, for a row chunk."""
    r, d = src.shape
    bh, bw = bs
    if bh == 1 and d % bw == 0:
        src, dst, keep = src.view(r, -1, bw), dst.view(r, -1, bw), keep.view(r, -1, 1)
    else:  # expand the block mask, cropping partial blocks
        keep = keep.repeat_interleave(bw, dim=1)[:, :d].repeat_interleave(bh, dim=0)[:r]
    if signed_zeros:  # the reference's weight * mask: -0.0 for pruned negatives, NaN for inf
        torch.mul(src, keep.neg().to(src.dtype), out=dst)
    else:
        itype = _INT[src.dtype]
        torch.bitwise_and(src.view(itype), keep.to(itype), out=dst.view(itype))


def _apply_table(src, dst, cut: TableCut, norm, bs, signed_zeros, chunk_elems) -> None:
    if cut.k == 0:
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)
        return
    if cut.k == cut.num_blocks:
        if signed_zeros:
            torch.mul(src, 0, out=dst)
        else:
            dst.zero_()
        return
    n, d = src.shape
    every_tie = cut.ties_pruned == cut.ties_total
    seen = pruned = 0  # ties pruned and blocks pruned so far
    for r0, r1 in row_chunks(n, d, chunk_elems, bs[0]):
        x = score_bits(src[r0:r1], bs, norm).sub_(cut.t)  # (rb, nbw): score bits - t
        left = cut.ties_pruned - seen  # ties still to prune
        ties = 0 if every_tie or left <= 0 else x.numel() - int(torch.count_nonzero(x))
        if every_tie or ties <= left:  # prune every tie of the chunk, or keep every one
            seen += ties
            keep = _keep_bits(x, keep_ties=not every_tie and left <= 0)
        else:  # prune the chunk's first `left` ties, keep the others
            seen += left
            split = int((x.view(-1) == 0).nonzero()[left - 1]) + 1
            eq = x.view(-1)[:split] == 0
            keep = _keep_bits(x, keep_ties=True)
            keep.view(-1)[:split].masked_fill_(eq, 0)
        pruned += keep.numel() + int(keep.sum())  # keep = -1
        _write(src[r0:r1], dst[r0:r1], keep, bs, signed_zeros)
    if pruned != cut.k:
        raise StaleCut(f"a cut for k={cut.k} pruned {pruned} blocks: the table changed since")


def apply_cuts(
    weights: Sequence[Tensor],
    cuts: Sequence[TableCut],
    norm: str,
    block_shape: Sequence[int],
    out: Sequence[Tensor] | None = None,
    signed_zeros: bool = False,
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> list[Tensor]:
    """Prune table ``i`` with ``cuts[i]`` into ``out[i]`` (same shape and dtype), or in place when
    ``out`` is None; returns the pruned tensors. Zeros are +0.0, or with ``signed_zeros`` the
    reference's ``weight * mask`` bit for bit (-0.0 for pruned negatives). Raises
    :class:`StaleCut` when a table does not lose exactly ``k`` blocks (out of place, ``weights``
    are untouched then; ``out`` holds partial results)."""
    bs = tuple(int(x) for x in block_shape)
    ws = [w.detach() for w in weights]
    dst = ws if out is None else [o.detach() for o in out]

    def one(i: int) -> Tensor:
        _apply_table(ws[i], dst[i], cuts[i], norm, bs, signed_zeros, chunk_elems)
        return dst[i]

    return map_tables(one, ws, workers)


def prune(
    weights: Tensor | Sequence[Tensor],
    norm: str,
    block_shape: Sequence[int],
    level: float,
    out: Tensor | Sequence[Tensor] | None = None,
    signed_zeros: bool = False,
    *,
    chunk_elems: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> Tensor | list[Tensor]:
    """Prune a table, or each of a list of tables on its own, at ``level``: :func:`cuts_for_levels`
    then :func:`apply_cuts` (in place when ``out`` is None). Returns a tensor for a tensor."""
    single = isinstance(weights, Tensor)
    ws = [weights] if single else list(weights)
    dst = None if out is None else [out] if single else list(out)
    kw = {"chunk_elems": chunk_elems, "workers": workers}
    series = cuts_for_levels(ws, norm, block_shape, [level], **kw)
    pruned = apply_cuts(ws, series.for_level(level), norm, block_shape, dst, signed_zeros, **kw)
    return pruned[0] if single else pruned
