"""Compact storage for pruned embedding tables: only the surviving blocks, EmbeddingBag semantics.

Why: PyTorch's data-sparsifier DLRM benchmark found that ``torch.sparse`` buys nothing for a
pruned DLRM: ``nn.EmbeddingBag`` cannot hold a sparse weight, so the reference made only the
interaction output COO, kept the dense tables (no memory saved) and ran ~2x slower. COO tables
would cost 20 bytes per surviving float (int64 row and column, float32 value; ``coo_nbytes``):
2.5x the dense table at level 0.5, 0.5x at 0.9, and no ``EmbeddingBag`` to look them up.

What: :class:`CompactEmbeddingBag`, a block-CSR table built from a pruned dense weight ``(n, d)``
and the pruning block width ``bw`` (1 or 4 in the sweep; ``d % bw == 0``). A block is ``bw``
consecutive floats of a row, stored when any of them is nonzero:

    row_base (ceil((n+1)/G),)  int32 (int64 past 2**31 blocks)  row_ptr of rows 0, G, 2G, ...
    row_off  (n + 1,)          uint8 (wider past 255 blocks a row)  row_ptr[r] - row_base[r >> log2 G]
    cols     (nnz_blocks,)     uint8 (int16 past 256 blocks a row)  block column of each stored block
    values   (nnz_blocks, bw)  the weight's dtype                  the surviving blocks, row-major

``row_ptr[r]``, where row r's blocks start, is a base per group of G rows plus a one-byte offset
per row: G is the largest power of 2 with ``G * d / bw <= 255`` (8 rows at bw 1, 32 at bw 4, for
d = 16), so an offset always fits and the group is a shift. That is 1.5 (bw 1) / 1.1 (bw 4)
bytes a row instead of an int32 row pointer's 4, the format's floor at high levels.

``forward(input, offsets=None, per_sample_weights=None)`` is ``nn.EmbeddingBag(mode="sum")``'s:
2-D ``(B, L)`` input (each row one bag) or 1-D input with ``offsets`` (``include_last_offset``
False; repeated offsets are empty bags, which give zeros). Vectorised, no Python loop over rows
or bags: the looked-up rows' block ranges are expanded into one list (``bincount`` + ``cumsum``
name the id each block serves), the blocks and their columns gathered with ``index_select``, and
written into the ``(bags, d / bw, bw)`` output with ``scatter_`` / ``index_copy_`` (one id per
bag, DLRM's case: every slot is written once) or summed with ``index_add_``. Inference only:
the tables are buffers, not parameters. (Weights of exact 0.0 that survived pruning are dropped
too: they add nothing to a sum, unless a per-sample weight is inf or NaN.)

:func:`compact_model` gives a DLRM whose tables are each the smaller of the dense table and its
compact form (a *hybrid*, chosen per table by exact size; at level 0 a table stays dense, since
its compact form would be 1.27x (bw 1) / 1.08x (bw 4) the dense one), sharing the MLPs;
:func:`table_bytes` measures the tables of any DLRM, dense or compacted.

Measured before choosing: one 2M-row table of width 16 with DLRM's init, pruned L1 with
lit_dlrm's cuts; bytes over the dense table's, and microseconds of one lookup of B ids (median of
40 rounds, paths alternating; 1 torch thread on 2 cores shared with other jobs, so only the
order of magnitude and the ranking count; ``dense`` = ``F.embedding_bag`` on the dense table):

                  bytes / dense                        | us, B = 16384                   | B = 1024
    block, level  compact  int32 ptr  bitmask  zero rows | dense  compact  bitmask  zero rows | dense  compact
    (1, 1) 0.5     0.648    0.688     0.594    1.062     |  422    2418    10419     559      |  14     108
    (1, 1) 0.9     0.148    0.188     0.194    0.877     |  317     926     2364     428      |  13      75
    (1, 1) 0.99    0.036    0.075     0.104    0.211     |  224     396     1101     242      |  12      64
    (1, 4) 0.5     0.549    0.594     0.594    1.000     |  205    1417     2076     327      |  12      90
    (1, 4) 0.9     0.124    0.169     0.194    0.406     |  201     511      715     208      |  12      66
    (1, 4) 0.99    0.028    0.073     0.104    0.102     |  104     191      367      81      |  10      60

* *zero rows* (drop all-zero rows: a row -> packed-row remap, then ``F.embedding_bag``) is as fast
  as dense, but pruning spreads the zeros over the rows: at level 0.9 only 0.9**16 = 19% of the
  rows of a (1, 1)-pruned table are empty, so it keeps 88% of the bytes. Rejected.
* *bitmask* (a per-row mask of the surviving blocks instead of ``cols``) saves bytes only below
  level ~0.9, and its forward works on all ``B x d / bw`` slots: 1.4-4x slower at B=16384. Rejected.
* *int32 ptr* (block-CSR with a plain int32 row pointer) costs 4 bytes a row: at 0.99 it is 2-2.6x the
  compact form and larger than COO (0.05); the two-level pointer fixes that for a shift and two
  byte-sized gathers.
* The compact lookup is 2-7x a dense one at B=16384 and 5-8x at 1024 (a handful of ops over the
  gathered blocks instead of one fused kernel; ``repeat_interleave`` and an integer division,
  half of an earlier draft's time, are gone), but the 26 lookups are a small part of a DLRM
  forward, which the MLPs dominate. Whole model at the Kaggle size, level 0.9, (1, 1) / (1, 4):
  tables 14.8% / 12.4% of the dense bytes, forward 1.02x / 1.02x dense at batch 16384 and
  1.08x / 1.07x at 1024 (``benchmarks/results/compact_kaggle.md``, ``benchmarks/compact.py``).
  Fusing the 26 lookups into one over concatenated tables halved the time at batch 1024 but
  tripled it at 16384 (one large scattered output instead of 26 cache-sized ones): not kept.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

DEFAULT_CHUNK_ROWS = 1 << 18  # rows per building step
_SMALL = (torch.uint8, torch.int16, torch.int32)


def _index_dtype(limit: int, small: tuple[torch.dtype, ...]) -> torch.dtype:
    """The first dtype of ``small`` that holds every value in [0, limit], else int64."""
    return next((dtype for dtype in small if limit <= torch.iinfo(dtype).max), torch.int64)


def _check_weight(weight: Tensor, block_width: int) -> tuple[int, int, int]:
    if weight.dim() != 2:
        raise ValueError(
            f"weight: expected a 2-D table (rows, dim), got shape {tuple(weight.shape)}"
        )
    n, d = weight.shape
    if block_width < 1 or d % block_width:
        raise ValueError(
            f"block_width: {block_width} does not divide the embedding dim {d} (expected d % block_width == 0)"
        )
    return n, d, d // block_width


def block_counts(weight: Tensor, block_width: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Surviving (not all-zero) blocks of each row of ``weight (n, d)`` -> int32 (n,)."""
    n, _, nb = _check_weight(weight, block_width)
    w = weight.detach()
    counts = torch.empty(n, dtype=torch.int32, device=w.device)
    for r0 in range(0, n, chunk_rows):
        chunk = w[r0 : r0 + chunk_rows].reshape(-1, nb, block_width)  # (r, nb, bw)
        torch.sum((chunk != 0).any(2), 1, dtype=torch.int32, out=counts[r0 : r0 + chunk_rows])
    return counts


def _layout(
    d: int, block_width: int, nnz_blocks: int
) -> tuple[torch.dtype, torch.dtype, int, torch.dtype]:
    """dtypes of row_base and row_off, rows per group, dtype of cols (module docstring)."""
    nb = d // block_width
    offset = next(dtype for dtype in _SMALL if torch.iinfo(dtype).max >= nb)
    # a group's rows hold at most group * nb blocks, so the offsets fit; a power of 2: rows >> shift
    group = 1 << ((torch.iinfo(offset).max // nb).bit_length() - 1)
    return _index_dtype(nnz_blocks, (torch.int32,)), offset, group, _index_dtype(nb - 1, _SMALL)


def csr_nbytes(n: int, d: int, block_width: int, nnz_blocks: int, value_size: int = 4) -> int:
    """Bytes of a :class:`CompactEmbeddingBag` of ``n`` rows of width ``d`` holding ``nnz_blocks``."""
    base, offset, group, col = _layout(d, block_width, nnz_blocks)
    size = lambda dtype: torch.empty((), dtype=dtype).element_size()  # noqa: E731
    return (
        -(-(n + 1) // group) * size(base)
        + (n + 1) * size(offset)
        + nnz_blocks * (size(col) + block_width * value_size)
    )


def coo_nbytes(weight: Tensor) -> int:
    """What a ``torch.sparse_coo`` copy of ``weight (n, d)`` would take: int64 indices (2, nnz) and
    the values (nnz,), overhead ignored. Counted, not built."""
    nnz = sum(int(torch.count_nonzero(part)) for part in weight.detach().split(DEFAULT_CHUNK_ROWS))
    return nnz * (2 * 8 + weight.element_size())


class CompactEmbeddingBag(nn.Module):
    """A pruned ``nn.EmbeddingBag(mode="sum")`` holding only its surviving blocks (block-CSR).

    Args:
        weight: the pruned dense table (n, d); any float dtype, read in row chunks.
        block_width: width of the pruned blocks (d % block_width == 0).
        counts: ``block_counts(weight, block_width)`` when already computed (saves one pass).
        chunk_rows: rows read per building step.

    Building reads the weight twice (counting, then copying) in chunks of ``chunk_rows`` rows;
    besides the result it holds three int32 arrays of one entry a row (counts and row pointers)
    and O(chunk) temporaries. Kaggle-size tables (33.8M rows): 2-11 s for all 26 on 2 shared cores.
    """

    def __init__(
        self,
        weight: Tensor,
        block_width: int,
        counts: Tensor | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        super().__init__()
        n, d, nb = _check_weight(weight, block_width)
        self.num_embeddings, self.embedding_dim, self.block_width = n, d, block_width
        w = weight.detach()
        if counts is None:
            counts = block_counts(w, block_width, chunk_rows)
        nnz = int(counts.sum(dtype=torch.int64))
        base_dtype, offset_dtype, group, col_dtype = _layout(d, block_width, nnz)
        self.group_shift = group.bit_length() - 1
        groups = -(-(n + 1) // group)
        row_ptr = torch.full(
            (groups * group,), nnz, dtype=base_dtype, device=w.device
        )  # (n + 1,) padded
        row_ptr[0] = 0
        torch.cumsum(counts, 0, dtype=base_dtype, out=row_ptr[1 : n + 1])
        by_group = row_ptr.view(groups, group)
        row_base = by_group[:, 0].clone()  # (groups,)
        row_off = (
            (by_group - row_base[:, None]).view(-1)[: n + 1].to(offset_dtype, copy=True)
        )  # (n + 1,)
        cols = torch.empty(nnz, dtype=col_dtype, device=w.device)
        values = torch.empty(nnz, block_width, dtype=w.dtype, device=w.device)  # (nnz, bw)
        for r0 in range(0, n, chunk_rows):
            chunk = w[r0 : r0 + chunk_rows].reshape(-1, block_width)  # (r * nb, bw)
            kept = (
                (chunk != 0).any(1).nonzero().squeeze(1)
            )  # (k,) int64: the chunk's surviving blocks
            a = int(row_ptr[r0])
            torch.index_select(chunk, 0, kept, out=values[a : a + kept.numel()])
            cols[a : a + kept.numel()] = kept.remainder_(nb)
        self.register_buffer("row_base", row_base)
        self.register_buffer("row_off", row_off)
        self.register_buffer("cols", cols)
        self.register_buffer("values", values)

    def row_ptr(self, rows: Tensor) -> Tensor:
        """Where the blocks of each of ``rows`` (K,) int64 start (row ``n``: the end) -> (K,) int64."""
        base = self.row_base.index_select(0, rows >> self.group_shift)
        return (base + self.row_off.index_select(0, rows)).long()

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    def nbytes(self) -> int:
        """In-memory bytes of the stored tensors."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.row_base, self.row_off, self.cols, self.values)
        )

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, block_width={self.block_width}, nnz_blocks={self.nnz_blocks}"

    def _bags(
        self, input: Tensor, offsets: Tensor | None
    ) -> tuple[Tensor, int, Tensor | None, int]:
        """-> ids (N,) int64, bags B, bag of each id (N,) or None when it is ``id_index // L``, L."""
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError(
                    "offsets: must be None when input is 2-D (B, L): each row is one bag"
                )
            return input.reshape(-1).long(), input.shape[0], None, input.shape[1]
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(
                f"input: expected 2-D (B, L), or 1-D with 1-D offsets; got input {tuple(input.shape)}, "
                f"offsets {None if offsets is None else tuple(offsets.shape)}"
            )
        ids, offsets = input.long(), offsets.long()
        if offsets.numel() and (
            int(offsets[0]) != 0
            or int(offsets[-1]) > ids.numel()
            or bool((offsets.diff() < 0).any())
        ):
            raise ValueError(
                f"offsets: expected non-decreasing offsets starting at 0 and <= len(input) = {ids.numel()}"
            )
        if offsets.numel() == 0 and ids.numel():
            raise ValueError("offsets: empty, but input has ids (expected offsets[0] == 0)")
        bag_of_id = (
            torch.searchsorted(offsets, torch.arange(ids.numel(), device=ids.device), right=True)
            - 1
        )
        return ids, offsets.numel(), bag_of_id, 0

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        """``nn.EmbeddingBag(mode="sum")``'s forward -> (bags, d)."""
        ids, bags, bag_of_id, per_bag = self._bags(input, offsets)
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(
                f"per_sample_weights: expected the input's shape {tuple(input.shape)}, "
                f"got {tuple(per_sample_weights.shape)}"
            )
        nb, bw = self.embedding_dim // self.block_width, self.block_width
        out = torch.zeros(
            bags * nb, bw, dtype=self.values.dtype, device=self.values.device
        )  # (B * nb, bw)
        start, end = self.row_ptr(torch.cat([ids, ids + 1])).view(2, -1)  # (N,) each
        counts = end - start  # blocks of each looked-up row
        ends = counts.cumsum(0)
        total = int(ends[-1]) if ids.numel() else 0
        first = ends - counts  # (N,) where each id's blocks start in the gathered list
        # which id each gathered block serves: ids starting at or before it, minus one (faster than
        # repeat_interleave; an empty row starts where the next one does and is counted before it)
        owner = torch.bincount(first, minlength=total + 1)[:total].cumsum_(0).sub_(1)  # (M,)
        pos = (
            (start - first).index_select(0, owner).add_(torch.arange(total, device=ids.device))
        )  # (M,)
        # width-1 blocks as flat vectors: 1-D index ops are ~2x faster than on (M, 1) rows
        table, dst = (self.values.view(-1), out.view(-1)) if bw == 1 else (self.values, out)
        values = table.index_select(0, pos)  # (M,) or (M, bw)
        if per_sample_weights is not None:
            weights = per_sample_weights.reshape(-1).to(values.dtype).index_select(0, owner)  # (M,)
            values = values * (weights if bw == 1 else weights[:, None])
        if bag_of_id is not None:
            bag = bag_of_id.index_select(0, owner)
        else:
            bag = owner if per_bag == 1 else torch.div(owner, per_bag, rounding_mode="floor")
        target = (bag * nb).add_(
            self.cols.index_select(0, pos)
        )  # (M,) int64: output slot of each block
        if bag_of_id is not None or per_bag != 1:  # several ids per bag: sum
            dst.index_add_(0, target, values)
        elif bw == 1:  # one id per bag: every slot is written once
            dst.scatter_(0, target, values)
        else:
            dst.index_copy_(0, target, values)
        return out.view(bags, self.embedding_dim)


def compact_table(table: nn.EmbeddingBag, block_width: int, name: str = "table") -> nn.Module:
    """``table`` itself when its dense weight is no larger than the compact form, else a
    :class:`CompactEmbeddingBag` of it (exact sizes: one counting pass decides). ``name`` is for errors."""
    if (
        table.mode != "sum"
        or table.padding_idx is not None
        or table.max_norm is not None
        or table.include_last_offset
    ):
        raise ValueError(
            f"{name}: expected nn.EmbeddingBag(mode='sum') without padding_idx, max_norm and "
            f"include_last_offset, got {table}"
        )
    weight = table.weight.detach()
    counts = block_counts(weight, block_width)
    n, d = weight.shape
    compact = csr_nbytes(
        n, d, block_width, int(counts.sum(dtype=torch.int64)), weight.element_size()
    )
    if compact >= weight.numel() * weight.element_size():
        return table
    return CompactEmbeddingBag(weight, block_width, counts=counts)


def compact_model(model: nn.Module, block_width: int) -> nn.Module:
    """A shallow copy of the DLRM ``model`` (MLPs shared) whose tables are compacted where that is
    smaller (:func:`compact_table`), for inference. ``block_width``: the pruning block's width."""
    compact = copy.copy(model)
    compact._modules = dict(
        model._modules
    )  # the copy's own module dict: emb_l is replaced, not shared
    compact.emb_l = nn.ModuleList(
        compact_table(t, block_width, f"emb_l.{k}") for k, t in enumerate(model.emb_l)
    )
    return compact


def table_bytes(model: nn.Module) -> int:
    """In-memory bytes of the embedding tables of a dense, pruned or compacted DLRM."""
    total = 0
    for table in model.emb_l:
        if isinstance(table, CompactEmbeddingBag):
            total += table.nbytes()
        else:
            total += table.weight.numel() * table.weight.element_size()
    return total
