"""Compact storage for pruned embedding tables: only the surviving blocks, EmbeddingBag semantics.

Why: PyTorch's data-sparsifier DLRM benchmark found that ``torch.sparse`` buys nothing for a
pruned DLRM: ``nn.EmbeddingBag`` cannot hold a sparse COO weight, so the reference only made the
interaction output COO, which kept the dense tables (no memory saved) and ran ~2x slower. COO
tables would not help either: 16 index bytes + 4 value bytes per surviving float is 1.25x the
dense table even at level 0.9 (``coo_nbytes``).

What: :class:`CompactEmbeddingBag` is a block-CSR table built from a pruned dense weight
``(n, d)`` and the pruning block width ``bw`` (1 or 4 in the sweep; ``d % bw == 0``). A block is
``bw`` consecutive floats of a row; it is stored when any of its values is nonzero:

    row_ptr  (n + 1,)         int32 (int64 past 2**31 blocks)  blocks of row r: row_ptr[r]:row_ptr[r+1]
    cols     (nnz_blocks,)    uint8 (int16 past 256 blocks a row)  block column of each stored block
    values   (nnz_blocks, bw) the weight's dtype                 the blocks, row-major

``forward(input, offsets=None, per_sample_weights=None)`` is ``nn.EmbeddingBag(mode="sum")``'s:
2-D ``(B, L)`` input (each row one bag) or 1-D input with ``offsets`` (``include_last_offset``
False; repeated offsets are empty bags, which give zeros). It is vectorised (no Python loop
over rows or bags): the looked-up rows' block ranges are expanded with ``repeat_interleave``,
the blocks and their columns gathered with ``index_select``, and written into the ``(bags,
d / bw, bw)`` output with ``index_copy_`` (one id per bag: every target is distinct) or summed
with ``index_add_``. Inference only: the tables are buffers, not parameters. (Weights of exact
0.0 that were not pruned are dropped too: they add nothing to a sum, unless a per-sample weight
is inf or NaN.)

:func:`compact_model` gives a DLRM whose tables are each the smaller of the dense table and its
compact form (a *hybrid*, chosen per table by exact size), sharing the MLPs; :func:`table_bytes`
measures any DLRM's tables.

Measured before choosing (``/tmp``-free numbers from a 2M-row table of width 16, DLRM's init,
pruned L1 at each level with lit_dlrm's own prune; 2 shared CPU cores, torch 2.13 CPU; one
lookup of ``B`` ids, microseconds, median of 20; ``dense`` = ``F.embedding_bag`` on the dense
table):

    block, level   bytes / dense: CSR  bitmask+ptr  zero-rows-dropped | us, B=16384: dense  CSR  bitmask  zero-rows
    (1, 1) 0.5                   0.688   0.594        1.062            |                55   1296    2973      80
    (1, 1) 0.9                   0.188   0.194        0.877            |                58    335    1003      71
    (1, 1) 0.99                  0.075   0.104        0.211            |                62    175     691      70
    (1, 4) 0.5                   0.594   0.594        1.000            |                59   1201     804      94
    (1, 4) 0.9                   0.169   0.194        0.406            |                55    290     418      76
    (1, 4) 0.99                  0.073   0.104        0.102            |                66    157     302      68

* Dropping zero rows (a row -> packed-row remap, then ``F.embedding_bag``) is as fast as dense,
  but pruning spreads the zeros over the rows: at level 0.9 only 0.9**16 = 19% of the rows of a
  (1, 1)-pruned table are empty, so it keeps 88% of the bytes. Rejected.
* A per-row bitmask of the surviving blocks instead of ``cols`` saves bytes only below ~0.9 and
  its forward works on all ``B x d / bw`` slots: 2-3x slower than CSR. Rejected.
* Block-CSR meets the memory target (level 0.9: 19% / 17% of dense; ``row_ptr``'s 4 bytes a row
  are the floor, 6.25%). Its forward is several ops over the gathered blocks instead of one
  fused kernel (those CSR times are a first draft; the ops kept here -- ``index_copy_`` instead
  of ``index_add_`` for one id per bag, an int64 index for ``index_add_``, whose int32 path is
  25x slower -- cut them to about 1/3), but a table lookup is ~1% of a DLRM forward at batch
  16384, dominated by the MLPs. Whole-model figures: ``benchmarks/compact.py``.
* Level 0 stores every block: CSR would be 1.31x (bw 1) / 1.08x (bw 4) the dense table, which
  is why :func:`compact_model` keeps such a table dense (hybrid).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

DEFAULT_CHUNK_ROWS = 1 << 18  # rows per building step: O(chunk) temporaries, never table-sized


def _index_dtype(limit: int, small: tuple[torch.dtype, ...]) -> torch.dtype:
    """The first dtype of ``small`` that holds every value in [0, limit], else int64."""
    return next((dtype for dtype in small if limit <= torch.iinfo(dtype).max), torch.int64)


def _check_weight(weight: Tensor, block_width: int) -> tuple[int, int, int]:
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D table (rows, dim), got shape {tuple(weight.shape)}")
    n, d = weight.shape
    if block_width < 1 or d % block_width:
        raise ValueError(f"block_width: {block_width} does not divide the embedding dim {d} (expected d % block_width == 0)")
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


def csr_nbytes(n: int, d: int, block_width: int, nnz_blocks: int, value_size: int = 4) -> int:
    """Bytes of a :class:`CompactEmbeddingBag` of ``n`` rows of width ``d`` holding ``nnz_blocks``."""
    ptr = torch.empty((), dtype=_index_dtype(nnz_blocks, (torch.int32,))).element_size()
    col = torch.empty((), dtype=_index_dtype(d // block_width - 1, (torch.uint8, torch.int16, torch.int32))).element_size()
    return (n + 1) * ptr + nnz_blocks * (col + block_width * value_size)


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
    """

    def __init__(self, weight: Tensor, block_width: int, counts: Tensor | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        n, d, nb = _check_weight(weight, block_width)
        self.num_embeddings, self.embedding_dim, self.block_width = n, d, block_width
        w = weight.detach()
        if counts is None:
            counts = block_counts(w, block_width, chunk_rows)
        nnz = int(counts.sum(dtype=torch.int64))
        row_ptr = torch.zeros(n + 1, dtype=_index_dtype(nnz, (torch.int32,)), device=w.device)  # (n + 1,)
        torch.cumsum(counts, 0, dtype=row_ptr.dtype, out=row_ptr[1:])
        cols = torch.empty(nnz, dtype=_index_dtype(nb - 1, (torch.uint8, torch.int16, torch.int32)), device=w.device)
        values = torch.empty(nnz, block_width, dtype=w.dtype, device=w.device)  # (nnz, bw)
        block_col = torch.arange(nb, dtype=cols.dtype, device=w.device)
        for r0 in range(0, n, chunk_rows):
            chunk = w[r0 : r0 + chunk_rows].reshape(-1, nb, block_width)  # (r, nb, bw)
            keep = (chunk != 0).any(2)  # (r, nb)
            a, b = int(row_ptr[r0]), int(row_ptr[r0 + chunk.shape[0]])
            values[a:b] = chunk[keep]
            cols[a:b] = block_col.expand_as(keep)[keep]
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("cols", cols)
        self.register_buffer("values", values)

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    def nbytes(self) -> int:
        """In-memory bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.cols, self.values))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, block_width={self.block_width}, nnz_blocks={self.nnz_blocks}"

    def _bags(self, input: Tensor, offsets: Tensor | None) -> tuple[Tensor, int, Tensor | None, int]:
        """-> ids (N,) int64, bags B, bag of each id (N,) or None when it is ``id_index // L``, L."""
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets: must be None when input is 2-D (B, L): each row is one bag")
            return input.reshape(-1).long(), input.shape[0], None, input.shape[1]
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(f"input: expected 2-D (B, L), or 1-D with 1-D offsets; got input {tuple(input.shape)}, "
                             f"offsets {None if offsets is None else tuple(offsets.shape)}")
        ids, offsets = input.long(), offsets.long()
        if offsets.numel() and (int(offsets[0]) != 0 or int(offsets[-1]) > ids.numel() or bool((offsets.diff() < 0).any())):
            raise ValueError(f"offsets: expected non-decreasing offsets starting at 0 and <= len(input) = {ids.numel()}")
        if offsets.numel() == 0 and ids.numel():
            raise ValueError("offsets: empty, but input has ids (expected offsets[0] == 0)")
        bag_of_id = torch.searchsorted(offsets, torch.arange(ids.numel(), device=ids.device), right=True) - 1
        return ids, offsets.numel(), bag_of_id, 0

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        """``nn.EmbeddingBag(mode="sum")``'s forward -> (bags, d)."""
        ids, bags, bag_of_id, per_bag = self._bags(input, offsets)
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(f"per_sample_weights: expected the input's shape {tuple(input.shape)}, "
                             f"got {tuple(per_sample_weights.shape)}")
        nb, bw = self.embedding_dim // self.block_width, self.block_width
        out = torch.zeros(bags * nb, bw, dtype=self.values.dtype, device=self.values.device)  # (B * nb, bw)
        start = self.row_ptr.index_select(0, ids).long()  # (N,)
        counts = self.row_ptr.index_select(0, ids + 1).long() - start  # blocks of each looked-up row
        ends = counts.cumsum(0)
        total = int(ends[-1]) if ids.numel() else 0
        owner = torch.repeat_interleave(counts, output_size=total)  # (M,) which id each block serves
        pos = torch.arange(total, device=ids.device) + (start - ends + counts).index_select(0, owner)  # (M,)
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
        target = bag * nb + self.cols.index_select(0, pos).long()  # (M,) output slot of each block
        if bag_of_id is None and per_bag == 1:  # one id per bag: every slot is written once
            dst.index_copy_(0, target, values)
        else:
            dst.index_add_(0, target, values)
        return out.view(bags, self.embedding_dim)


def compact_table(table: nn.EmbeddingBag, block_width: int) -> nn.Module:
    """``table`` itself when its dense weight is no larger than the compact form, else a
    :class:`CompactEmbeddingBag` of it (exact sizes: one counting pass decides)."""
    if table.mode != "sum" or table.padding_idx is not None or table.max_norm is not None or table.include_last_offset:
        raise ValueError("table: only nn.EmbeddingBag(mode='sum') without padding_idx, max_norm or include_last_offset can be compacted")
    weight = table.weight.detach()
    counts = block_counts(weight, block_width)
    n, d = weight.shape
    compact = csr_nbytes(n, d, block_width, int(counts.sum(dtype=torch.int64)), weight.element_size())
    if compact >= weight.numel() * weight.element_size():
        return table
    return CompactEmbeddingBag(weight, block_width, counts=counts)


def compact_model(model: nn.Module, block_width: int) -> nn.Module:
    """A shallow copy of the DLRM ``model`` (MLPs shared) whose tables are compacted where that is
    smaller (:func:`compact_table`), for inference. ``block_width``: the pruning block's width."""
    compact = copy.copy(model)
    compact._modules = dict(model._modules)  # the copy's own module dict: emb_l is replaced, not shared
    compact.emb_l = nn.ModuleList(compact_table(table, block_width) for table in model.emb_l)
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


__all__ = ["CompactEmbeddingBag", "block_counts", "csr_nbytes", "coo_nbytes", "compact_table", "compact_model", "table_bytes"]
