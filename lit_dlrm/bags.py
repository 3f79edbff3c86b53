"""``Bags``: a multi-hot batch of ids, several per row and table, in TorchRec's jagged layout.

    values  int64 (N,)    every id, table after table; within a table, row after row
    lengths int64 (T, B)  lengths[t, b] ids of row b's bag in table t (0 allowed: an empty bag)

``KeyedJaggedTensor(keys, values=bags.values, lengths=bags.lengths.reshape(-1))`` is the same
batch (KJT's values are key-major and its lengths are ``T * B`` long, key-major), so a TorchRec
backend takes ``Bags`` as they are. A one-hot batch stays a plain ``(B, T)`` tensor (the fast
path); ``Bags.from_one_hot`` turns it into bags of one id each.

``Bags`` has ``to`` (so Lightning moves it to the device with the rest of the batch) and row
slicing ``bags[a:b]`` (rows a..b-1 of every table, as ``sparse[a:b]`` of a one-hot batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Bags:
    values: Tensor
    lengths: Tensor

    def __post_init__(self):
        if self.lengths.dim() != 2:
            raise ValueError(
                f"Bags.lengths: expected shape (tables, rows), got {self.lengths.shape}"
            )
        if self.values.dim() != 1 or self.values.numel() != int(self.lengths.sum()):
            raise ValueError(
                f"Bags.values: expected {int(self.lengths.sum())} ids (the sum of lengths) in one "
                f"dimension, got shape {tuple(self.values.shape)}"
            )

    @classmethod
    def from_one_hot(cls, sparse: Tensor) -> Bags:
        """sparse (B, T) ids -> bags of one id each (the same batch)."""
        return cls(sparse.t().reshape(-1), torch.ones_like(sparse.t()))

    @property
    def num_rows(self) -> int:
        return self.lengths.shape[1]

    def to(self, *args, **kwargs) -> Bags:
        return Bags(self.values.to(*args, **kwargs), self.lengths.to(*args, **kwargs))

    def offsets(self) -> Tensor:
        """int64 (T * B + 1,): where each bag starts in ``values``, key-major, and the end."""
        flat = self.lengths.reshape(-1)
        return torch.cat([flat.new_zeros(1), torch.cumsum(flat, 0)])

    def per_table(self) -> list[tuple[Tensor, Tensor]]:
        """(ids (N_t,), offsets (B,)) of each table: ``EmbeddingBag(ids, offsets)``'s arguments."""
        b = self.num_rows
        o = self.offsets()
        out = []
        for t in range(self.lengths.shape[0]):
            start, end = int(o[t * b]), int(o[(t + 1) * b])
            out.append((self.values[start:end], o[t * b : (t + 1) * b] - start))
        return out

    def __getitem__(self, rows: slice) -> Bags:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"Bags: only row slices a:b are supported, got {rows!r}")
        a, b, _ = rows.indices(self.num_rows)
        b = max(a, b)
        o, n = self.offsets(), self.num_rows
        parts = [self.values[o[t * n + a] : o[t * n + b]] for t in range(self.lengths.shape[0])]
        return Bags(torch.cat(parts) if parts else self.values[:0], self.lengths[:, a:b])
