"""Pruned embedding tables holding only their surviving blocks, with EmbeddingBag(sum)'s forward.

:class:`CompactEmbeddingBag` is a block-CSR table built from a pruned dense weight ``(n, d)`` and
the pruning block width ``bw`` (``d % bw == 0``); a block (``bw`` consecutive floats of a row) is
stored when any of it is nonzero:

    row_base (ceil((n+1)/G),)  int32 (int64 past 2**31 blocks)     row_ptr of rows 0, G, 2G...
    row_off  (n + 1,)          uint8 (wider past 255 blocks a row)  row_ptr[r] - row_base[r // G]
    cols     (nnz_blocks,)     uint8 (int16 past 256 blocks a row)  block column of each block
    values   (nnz_blocks, bw)  the weight's dtype                   the surviving blocks, in order

Its forward takes 2-D ``(B, L)`` input or 1-D input with ``offsets`` (empty bags give zeros) and
optional ``per_sample_weights``; inference only (buffers, not parameters). :func:`compact_model`
keeps each table in the smaller of its dense and compact forms; :func:`table_bytes` measures the
tables of any DLRM. Layouts compared and measured: ``docs/design.md``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lit_dlrm.model import with_tables

from .chunks import row_chunks

CHUNK_ELEMS = 1 << 22  # elements read per building step
_SMALL = (torch.uint8, torch.int16, torch.int32)


def _index_dtype(limit: int, small: tuple[torch.dtype, ...]) -> torch.dtype:
    """The first dtype of ``small`` that holds every value in [0, limit], else int64."""
    return next((dtype for dtype in small if limit <= torch.iinfo(dtype).max), torch.int64)


def flatnonzero(mask: Tensor) -> Tensor:
    """Positions of the True entries of the 1-D bool ``mask`` -> (k,) int64; on CPU numpy's
    (faster than ``torch.nonzero`` there: the compact build's hot loop)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _check_weight(weight: Tensor, block_width: int) -> tuple[int, int, int]:
    if weight.dim() != 2:
        raise ValueError(
            f"weight: expected a 2-D table (rows, dim), got shape {tuple(weight.shape)}"
        )
    n, d = weight.shape
    if block_width < 1 or d % block_width:
        raise ValueError(
            f"block_width: {block_width} does not divide the embedding dim {d} "
            "(expected d % block_width == 0)"
        )
    return n, d, d // block_width


def block_counts(weight: Tensor, block_width: int, chunk_elems: int = CHUNK_ELEMS) -> Tensor:
    """Surviving (not all-zero) blocks of each row of ``weight (n, d)`` -> int32 (n,)."""
    n, d, nb = _check_weight(weight, block_width)
    w = weight.detach()
    counts = torch.empty(n, dtype=torch.int32, device=w.device)
    for r0, r1 in row_chunks(n, d, chunk_elems):
        chunk = w[r0:r1].reshape(-1, nb, block_width)  # (r, nb, bw)
        torch.sum((chunk != 0).any(2), 1, dtype=torch.int32, out=counts[r0:r1])
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
    """Bytes of a :class:`CompactEmbeddingBag` of ``n`` rows of width ``d``, ``nnz_blocks``."""
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
    w = weight.detach()
    nnz = sum(int(torch.count_nonzero(w[a:b])) for a, b in row_chunks(*w.shape, CHUNK_ELEMS))
    return nnz * (2 * 8 + weight.element_size())


class CompactEmbeddingBag(nn.Module):
    """A pruned ``nn.EmbeddingBag(mode="sum")`` holding only its surviving blocks (block-CSR).

    Args:
        weight: the pruned dense table (n, d); any float dtype, read in row chunks.
        block_width: width of the pruned blocks (d % block_width == 0).
        counts: ``block_counts(weight, block_width)`` when already computed (saves one pass).
        chunk_elems: elements read per building step.

    Building reads the weight twice (counting, then copying) in row chunks of ``chunk_elems``;
    besides the result it holds three int32 arrays of one entry a row (counts and row pointers)
    and O(chunk) temporaries.
    """

    def __init__(
        self,
        weight: Tensor,
        block_width: int,
        counts: Tensor | None = None,
        chunk_elems: int = CHUNK_ELEMS,
    ) -> None:
        super().__init__()
        n, d, nb = _check_weight(weight, block_width)
        self.num_embeddings, self.embedding_dim, self.block_width = n, d, block_width
        w = weight.detach()
        if counts is None:
            counts = block_counts(w, block_width, chunk_elems)
        nnz = int(counts.sum(dtype=torch.int64))
        base_dtype, offset_dtype, group, col_dtype = _layout(d, block_width, nnz)
        self.group_shift = group.bit_length() - 1
        groups = -(-(n + 1) // group)
        # (n + 1,) padded to whole groups
        row_ptr = torch.full((groups * group,), nnz, dtype=base_dtype, device=w.device)
        row_ptr[0] = 0
        torch.cumsum(counts, 0, dtype=base_dtype, out=row_ptr[1 : n + 1])
        by_group = row_ptr.view(groups, group)
        row_base = by_group[:, 0].clone()  # (groups,)
        row_off = (by_group - row_base[:, None]).view(-1)[: n + 1].to(offset_dtype, copy=True)
        cols = torch.empty(nnz, dtype=col_dtype, device=w.device)
        values = torch.empty(nnz, block_width, dtype=w.dtype, device=w.device)  # (nnz, bw)
        for r0, r1 in row_chunks(n, d, chunk_elems):
            chunk = w[r0:r1].reshape(-1, block_width)  # (r * nb, bw)
            kept = flatnonzero((chunk != 0).any(1))  # (k,) the chunk's surviving blocks
            a = int(row_ptr[r0])
            torch.index_select(chunk, 0, kept, out=values[a : a + kept.numel()])
            cols[a : a + kept.numel()] = kept.remainder_(nb)
        self.register_buffer("row_base", row_base)
        self.register_buffer("row_off", row_off)
        self.register_buffer("cols", cols)
        self.register_buffer("values", values)

    @classmethod
    def from_buffers(
        cls, num_embeddings: int, embedding_dim: int, block_width: int, buffers: dict[str, Tensor]
    ) -> CompactEmbeddingBag:
        """The table whose ``state_dict()`` was ``buffers`` (``row_base``, ``row_off``, ``cols``,
        ``values``), for ``num_embeddings`` rows of width ``embedding_dim``. Raises ValueError
        naming the buffer whose shape or dtype the layout does not allow."""
        meta = torch.empty(num_embeddings, embedding_dim, device="meta")
        n, d, _ = _check_weight(meta, block_width)
        values = buffers.get("values")
        nnz = -1 if values is None else values.shape[0]
        base_dtype, offset_dtype, group, col_dtype = _layout(d, block_width, max(nnz, 0))
        expected = {
            "row_base": ((-(-(n + 1) // group),), base_dtype),
            "row_off": ((n + 1,), offset_dtype),
            "cols": ((nnz,), col_dtype),
            "values": ((nnz, block_width), None),
        }
        for name, (shape, dtype) in expected.items():
            t = buffers.get(name)
            if t is None or tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
                got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(
                    f"{name}: expected {dtype or 'float'} {shape} for a {n} x {d} table of "
                    f"width-{block_width} blocks, got {got}"
                )
        table = cls.__new__(cls)
        nn.Module.__init__(table)
        table.num_embeddings, table.embedding_dim, table.block_width = n, d, block_width
        table.group_shift = group.bit_length() - 1
        for name in expected:
            table.register_buffer(name, buffers[name])
        return table

    def row_ptr(self, rows: Tensor) -> Tensor:
        """Where the blocks of ``rows`` (K,) int64 start (row ``n``: the end) -> (K,) int64."""
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
        sizes = f"{self.num_embeddings}, {self.embedding_dim}"
        return f"{sizes}, block_width={self.block_width}, nnz_blocks={self.nnz_blocks}"

    def _bags(
        self, input: Tensor, offsets: Tensor | None
    ) -> tuple[Tensor, int, Tensor | None, int]:
        """-> ids (N,) int64, bags B, bag of each id (N,) (None: ``id_index // L``), L."""
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError(
                    "offsets: must be None when input is 2-D (B, L): each row is one bag"
                )
            return input.reshape(-1).long(), input.shape[0], None, input.shape[1]
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(
                "input: expected 2-D (B, L), or 1-D with 1-D offsets; "
                f"got input {tuple(input.shape)}, "
                f"offsets {None if offsets is None else tuple(offsets.shape)}"
            )
        ids, offsets = input.long(), offsets.long()
        if offsets.numel() and (
            int(offsets[0]) != 0
            or int(offsets[-1]) > ids.numel()
            or bool((offsets.diff() < 0).any())
        ):
            raise ValueError(
                "offsets: expected non-decreasing offsets starting at 0 and <= len(input) = "
                f"{ids.numel()}"
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
        # .item(), not int(): under torch.export it is an unbacked size, so the graph stays general
        total = ends[-1].item() if ids.numel() else 0
        torch._check(total >= 0)
        first = ends - counts  # (N,) where each id's blocks start in the gathered list
        # which id each gathered block serves: ids starting at or before it, minus one (faster than
        # repeat_interleave; an empty row starts where the next one does and is counted before it)
        owner = torch.bincount(first, minlength=total + 1)[:total].cumsum_(0).sub_(1)  # (M,)
        pos = (
            (start - first).index_select(0, owner).add_(torch.arange(total, device=ids.device))
        )  # (M,)
        # width-1 blocks as flat vectors: 1-D index ops are faster than on (M, 1) rows
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
    :class:`CompactEmbeddingBag` of it (exact sizes: one counting pass decides). ``name`` names it
    in errors."""
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
    return with_tables(
        model, [compact_table(t, block_width, f"emb_l.{k}") for k, t in enumerate(model.emb_l)]
    )


def table_bytes(model: nn.Module) -> int:
    """In-memory bytes of the embedding tables of a dense, pruned or compacted DLRM."""
    total = 0
    for table in model.emb_l:
        if isinstance(table, CompactEmbeddingBag):
            total += table.nbytes()
        else:
            total += table.weight.numel() * table.weight.element_size()
    return total
