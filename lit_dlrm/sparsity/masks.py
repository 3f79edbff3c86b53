"""Norm-based block masks, the same as PyTorch's `DataNormSparsifier`, computed fast and lean.

What `DataNormSparsifier` does for a table `weight: (n, d)` (default `zeros_per_block` = whole
block; torch/ao/pruning/_experimental/data_sparsifier/data_norm_sparsifier.py):

1. element score `|w|` (L1) or `w * w` (L2);
2. block score = `F.avg_pool2d(score, block_shape, stride=block_shape, ceil_mode=True)`: blocks
   start at index 0, a partial last block is averaged over the elements it has;
3. `k = round(level * num_blocks)` (Python's round: half to even) blocks with the lowest scores
   are zeroed, chosen by `torch.sort(stable=False)` of the scores;
4. `squash_mask()` multiplies the weight by the int8 mask (so pruned negatives become -0.0).

How this module does it, without sorting and without table-sized temporaries:

* the weight is read in row chunks (`chunk_elems` elements, a multiple of the block height);
  block scores are recomputed per chunk with the very same ops (`abs` / `mul` and
  `F.avg_pool2d`), so every score is bit-identical to the reference's;
* the k-th smallest score is found by a radix select on the scores' bit patterns (for
  non-negative floats, integer order of the bits is float order): one `torch.bincount` pass per
  16-bit digit (2 passes for float32), each over the chunks;
* a last pass writes the mask: blocks scoring below the threshold `t` are pruned, blocks above
  are kept, and of the blocks equal to `t` the first `k - count_below` in row-major block order
  are pruned. That is exactly what a *stable* sort would choose.

Parity (what holds exactly; proven in tests/test_sparsity_masks.py against DataNormSparsifier)
----------------------------------------------------------------------------------------------
* The number of pruned blocks, the set of blocks scoring strictly below the threshold (all
  pruned) and strictly above it (all kept) are always identical to the reference's.
* When the cutoff does not split a group of equal block scores (the usual case for distinct
  floats; always at levels 0 and 1), the masks are identical.
* When it does split a tie group, which tied blocks are pruned depends on the sort. The
  reference calls `torch.sort(stable=False)`; on CPU that is x86-simd-sort's quicksort (AVX2 /
  AVX512 builds) or `std::sort`, neither stable, and the measured order of ties differs from
  index order for n >= 100 on this AVX512 machine, so the reference's choice is
  platform-dependent. `ties="stable"` (default) breaks ties by index: deterministic everywhere.
  `ties="torch"` reproduces the reference bit-for-bit on the running machine: when (and only
  when) a tie group straddles the cutoff, it sorts the block scores once with
  `torch.sort(stable=False)`, the same kernel the reference runs on each repeated row of its
  score tensor, and prunes its first k (costs 12 bytes per block for that table).
* NaN weights: unsupported (the reference ranks NaN last; here NaN ranks above +inf by payload).
* Tables of width 1: the reference squeezes (n, 1) to a row vector and its mask no longer has the
  weight's shape; here blocks are laid over the (n, d) table as for any width.

Threads: the chunked passes are many small, memory-bound ops. With torch's OpenMP pool each op
ends in a barrier, and when the cores are shared (other processes running) those barriers
made a 2-thread run 10-30x slower than a 1-thread run here (2-core machine, measured). So the
functions below run torch single-threaded by default (`threads=1`, restored afterwards; pass
`threads=None` to leave torch's setting alone; note torch's thread count is process-wide), and
`prune_tables` spreads whole tables over `workers` Python threads instead (torch releases the
GIL inside ops), which degrades gracefully under contention.

Memory: besides the output (a bool mask, 1 byte per element, or a pruned copy), temporaries are
O(chunk_elems). No int64 tensor of table size is built (except `ties="torch"` in a tie case).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lit_dlrm.sweep.grid import NORMS, GridPoint

DEFAULT_CHUNK_ELEMS = 1 << 20  # 4 MiB of float32 per chunk
_DIGIT_BITS = 16
_TIES = ("stable", "torch")

# integer view and "clear the sign bit" mask for each float dtype
_INT_VIEW = {
    torch.float32: (torch.int32, 0x7FFFFFFF, 32),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 64),
    torch.float16: (torch.int16, 0x7FFF, 16),
    torch.bfloat16: (torch.int16, 0x7FFF, 16),
}


def _check_args(
    weight: torch.Tensor, level: float, block_shape: Sequence[int], norm: str, ties: str
) -> tuple[int, int]:
    if weight.dim() != 2:
        raise ValueError(
            f"weight: expected a 2-D table (rows, dim), got shape {tuple(weight.shape)}"
        )
    if weight.dtype not in _INT_VIEW:
        raise ValueError(f"weight: unsupported dtype {weight.dtype} (expected a float dtype)")
    if not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"level: {level} is outside [0, 1]")
    if norm not in NORMS:
        raise ValueError(f"norm: unknown norm {norm!r} (expected L1 or L2)")
    if ties not in _TIES:
        raise ValueError(f"ties: unknown policy {ties!r} (expected 'stable' or 'torch')")
    bh, bw = (int(x) for x in block_shape)
    n, d = weight.shape
    if bh < 1 or bw < 1 or bh > max(n, 1) or bw > max(d, 1):
        raise ValueError(
            f"block_shape: {(bh, bw)} does not fit a table of shape {(n, d)} "
            f"(expected 1 <= height <= rows and 1 <= width <= dim)"
        )
    return bh, bw


def _chunk_rows(n: int, d: int, bh: int, chunk_elems: int) -> int:
    rows = max(1, chunk_elems // max(d, 1))
    return max(bh, rows - rows % bh)


def _chunk_scores(w: torch.Tensor, block_shape: tuple[int, int], norm: str) -> torch.Tensor:
    """Block scores of a row chunk `w: (r, d)` -> `(ceil(r/bh), ceil(d/bw))`, same ops as the reference."""
    s = torch.abs(w) if norm == "L1" else w * w  # (r, d)
    if block_shape == (1, 1):
        return s  # avg_pool2d with a 1x1 kernel is the identity (x / 1)
    return F.avg_pool2d(s[None, None], kernel_size=block_shape, stride=block_shape, ceil_mode=True)[
        0, 0
    ]


def _score_bits(w: torch.Tensor, block_shape: tuple[int, int], norm: str) -> torch.Tensor:
    """Scores of a chunk as non-negative integers ordered like the float scores: (blocks,)."""
    itype, sign_off, _ = _INT_VIEW[w.dtype]
    s = _chunk_scores(w, block_shape, norm).contiguous()
    bits = s.view(itype).reshape(-1)
    if itype == torch.int16:
        bits = bits.to(torch.int32)
    # scores are >= 0 (or NaN); clearing the sign bit maps -NaN to NaN and keeps order.
    return bits.bitwise_and_(sign_off)


@dataclass(frozen=True)
class _Cut:
    """Where the k lowest blocks end: prune bits < t, and the first `ties_pruned` bits == t."""

    k: int
    num_blocks: int
    t: int  # threshold bit pattern (as Python int)
    ties_pruned: int  # how many blocks equal to t are pruned (first ones in block order)
    ties_total: int  # how many blocks equal t


def _chunks(weight: torch.Tensor, bh: int, chunk_elems: int) -> Iterator[tuple[int, torch.Tensor]]:
    n, d = weight.shape
    step = _chunk_rows(n, d, bh, chunk_elems)
    for r0 in range(0, n, step):
        yield r0, weight[r0 : r0 + step]


def _find_cut(
    weight: torch.Tensor,
    k: int,
    num_blocks: int,
    block_shape: tuple[int, int],
    norm: str,
    chunk_elems: int,
) -> _Cut:
    """Radix select the k-th smallest block score (1 <= k < num_blocks), 16 bits per pass."""
    _, _, nbits = _INT_VIEW[weight.dtype]
    prefix = 0  # the threshold's bits above the current digit
    rank = k  # rank of the threshold inside the blocks matching `prefix` (1-based)
    below = 0  # blocks strictly below the threshold found so far
    hist = None
    for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
        hist = torch.zeros(1 << _DIGIT_BITS, dtype=torch.int64)
        for _, w in _chunks(weight, block_shape[0], chunk_elems):
            bits = _score_bits(w, block_shape, norm)  # (blocks in chunk,)
            if shift + _DIGIT_BITS < nbits:  # keep only blocks whose higher digits match
                bits = bits[(bits >> (shift + _DIGIT_BITS)) == prefix]
            digit = (bits >> shift) & ((1 << _DIGIT_BITS) - 1)
            hist += torch.bincount(digit, minlength=1 << _DIGIT_BITS)
        cum = torch.cumsum(hist, 0)
        b = int(torch.searchsorted(cum, torch.tensor(rank, dtype=torch.int64)))
        before = int(cum[b - 1]) if b > 0 else 0
        below += before
        rank -= before
        prefix = (prefix << _DIGIT_BITS) | b
    assert hist is not None
    ties_total = int(hist[prefix & ((1 << _DIGIT_BITS) - 1)])
    return _Cut(k=k, num_blocks=num_blocks, t=prefix, ties_pruned=k - below, ties_total=ties_total)


def _expand(
    block_keep: torch.Tensor, block_shape: tuple[int, int], rows: int, d: int
) -> torch.Tensor:
    """Block mask (rb, nbw) -> element mask (rows, d), cropping the partial blocks."""
    bh, bw = block_shape
    m = block_keep
    if bw > 1:
        m = m.repeat_interleave(bw, dim=1)[:, :d]
    if bh > 1:
        m = m.repeat_interleave(bh, dim=0)[:rows]
    return m


def _num_blocks(n: int, d: int, block_shape: tuple[int, int]) -> int:
    bh, bw = block_shape
    return -(-n // bh) * -(-d // bw)


def _keep_chunks(
    weight: torch.Tensor,
    level: float,
    block_shape: tuple[int, int],
    norm: str,
    ties: str,
    chunk_elems: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, keep mask of that row chunk: bool (r, d)) for 0 < k < num_blocks."""
    n, d = weight.shape
    num_blocks = _num_blocks(n, d, block_shape)
    k = round(level * num_blocks)  # Python round, as the reference
    if k <= 0 or k >= num_blocks:
        raise AssertionError("trivial levels are handled by the callers")
    cut = _find_cut(weight, k, num_blocks, block_shape, norm, chunk_elems)
    if ties == "torch" and 0 < cut.ties_pruned < cut.ties_total:
        yield from _keep_chunks_torch_sort(weight, k, block_shape, norm, chunk_elems)
        return
    seen_ties = 0
    t = cut.t
    for r0, w in _chunks(weight, block_shape[0], chunk_elems):
        bits = _score_bits(w, block_shape, norm)  # (blocks,)
        if cut.ties_pruned == cut.ties_total:
            keep = bits > t
        else:
            eq = bits == t
            rank = torch.cumsum(eq, 0)  # (blocks,) int64, chunk-sized
            rank += seen_ties
            if rank.numel():
                seen_ties = int(rank[-1])
            keep = (bits > t) | (eq & (rank > cut.ties_pruned))
        nbw = -(-d // block_shape[1])
        yield r0, _expand(keep.view(-1, nbw), block_shape, w.shape[0], d)


def _keep_chunks_torch_sort(weight, k, block_shape, norm, chunk_elems):
    """Exact reference choice among ties: one unstable torch.sort of all block scores."""
    n, d = weight.shape
    nbw = -(-d // block_shape[1])
    scores = torch.cat(
        [
            _chunk_scores(w, block_shape, norm).reshape(-1)
            for _, w in _chunks(weight, block_shape[0], chunk_elems)
        ]
    )
    order = torch.sort(scores, stable=False).indices  # (num_blocks,) int64
    del scores
    keep_blocks = torch.ones(order.numel(), dtype=torch.bool)
    keep_blocks[order[:k]] = False
    del order
    keep_blocks = keep_blocks.view(-1, nbw)  # (ceil(n/bh), nbw)
    bh = block_shape[0]
    for r0, w in _chunks(weight, bh, chunk_elems):
        kb = keep_blocks[r0 // bh : r0 // bh + -(-w.shape[0] // bh)]
        yield r0, _expand(kb, block_shape, w.shape[0], d)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `torch.set_num_threads(n)` (None: unchanged), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _trivial(weight: torch.Tensor, level: float, block_shape: tuple[int, int]) -> bool | None:
    """True: keep all, False: prune all, None: a real cut is needed."""
    n, d = weight.shape
    num_blocks = _num_blocks(n, d, block_shape)
    k = round(level * num_blocks)
    if level <= 0 or k <= 0:
        return True
    if level >= 1 or k >= num_blocks:
        return False
    return None


def keep_mask(
    weight: torch.Tensor,
    level: float,
    block_shape: Sequence[int] = (1, 4),
    norm: str = "L1",
    *,
    ties: str = "stable",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    threads: int | None = 1,
) -> torch.Tensor:
    """Which elements of `weight: (n, d)` DataNormSparsifier keeps -> bool (n, d), True = keep.

    See the module docstring for the exact parity and the `ties` policy.
    """
    bs = _check_args(weight, level, block_shape, norm, ties)
    w = weight.detach()
    triv = _trivial(w, level, bs)
    if triv is not None:
        return torch.full(w.shape, triv, dtype=torch.bool)
    mask = torch.empty(w.shape, dtype=torch.bool)  # (n, d)
    with torch_threads(threads):
        for r0, keep in _keep_chunks(w, level, bs, norm, ties, chunk_elems):
            mask[r0 : r0 + keep.shape[0]] = keep
    return mask


def prune(
    weight: torch.Tensor,
    level: float,
    block_shape: Sequence[int] = (1, 4),
    norm: str = "L1",
    signed_zeros: bool = False,
    *,
    ties: str = "stable",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    threads: int | None = 1,
) -> torch.Tensor:
    """A NEW tensor: `weight` where kept, zero where pruned; `weight` itself is untouched.

    Always a new tensor, at level 0 too (a copy), so callers may modify it freely.
    `signed_zeros=False` writes +0.0 (compresses well). `signed_zeros=True` reproduces the
    reference's `weight * mask` exactly: -0.0 for pruned negatives (and NaN for pruned +-inf).
    """
    bs = _check_args(weight, level, block_shape, norm, ties)
    w = weight.detach()
    triv = _trivial(w, level, bs)
    if triv is True:
        return w.clone(memory_format=torch.contiguous_format)
    if triv is False:
        return w * 0 if signed_zeros else torch.zeros(w.shape, dtype=w.dtype)
    out = torch.empty(w.shape, dtype=w.dtype)  # (n, d)
    zero = torch.zeros((), dtype=w.dtype)
    with torch_threads(threads):
        for r0, keep in _keep_chunks(w, level, bs, norm, ties, chunk_elems):
            rows = keep.shape[0]
            src, dst = w[r0 : r0 + rows], out[r0 : r0 + rows]
            if signed_zeros:
                torch.mul(src, keep, out=dst)
            else:
                torch.where(keep, src, zero, out=dst)
    return out


def prune_tables(
    weights: Sequence[torch.Tensor],
    point: GridPoint,
    signed_zeros: bool = False,
    *,
    ties: str = "stable",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    workers: int | None = None,
) -> list[torch.Tensor]:
    """Prune each table on its own at one grid point -> new tensors, in the input order.

    Largest tables first: their chunk temporaries come and go before the pruned copies pile up,
    so the peak is about the model plus its pruned copy plus `workers` chunks. Tables are spread
    over `workers` threads (default: up to 2, the CPU count), torch single-threaded inside each.
    """
    order = sorted(range(len(weights)), key=lambda i: weights[i].numel(), reverse=True)
    workers = workers or max(1, min(2, os.cpu_count() or 1))

    def one(i: int) -> torch.Tensor:
        return prune(
            weights[i],
            point.sparsity_level,
            point.sparse_block_shape,
            point.norm,
            signed_zeros,
            ties=ties,
            chunk_elems=chunk_elems,
            threads=None,
        )

    out: list[torch.Tensor | None] = [None] * len(weights)
    with torch_threads(1):
        if workers == 1:
            for i in order:
                out[i] = one(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for i, t in zip(order, pool.map(one, order)):
                    out[i] = t
    return out  # type: ignore[return-value]
