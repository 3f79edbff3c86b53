"""Row-wise symmetric quantization of (pruned) float32 tables that keeps pruned zeros exactly zero.

Per row ``scale = max|w| / qmax`` (qmax 127 at 8 bits, 7 at 4 bits; stored in ``scale_dtype``,
rounded up), ``q = clamp(round(w / scale), -qmax, qmax)``, ``w' = q * scale``: 0.0 of either sign
comes back +0.0, an all-zero row gets scale 0, the error is at most ``scale / 2``.
:class:`QuantizedTable` holds ``q`` (int8 ``(n, d)``, or at 4 bits uint8 ``(n, d / 2)``, column 2j
in the low nibble; odd widths refused) and ``scale`` (``(n,)``, bfloat16 by default).
``quantize_dequantize`` equals ``dequantize(quantize_rows(w))`` bit for bit, in row chunks.
``quantized_state_dict`` / ``load_quantized_state_dict`` swap ``emb_l.K.weight`` for
``.q`` + ``.scale`` and back. :class:`QuantizedEmbeddingBag` looks a table up in integers with
torch's quantized embedding-bag kernels (:func:`pack_rows`); :func:`quantized_model` builds a DLRM
of them. Errors: ValueError naming the argument (or row) at fault.
Why symmetric, why bfloat16 scales: ``docs/design.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_dlrm.model import with_tables

from .chunks import map_tables, row_chunks, torch_threads

QMAX = {8: 127, 4: 7}
SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DEFAULT_CHUNK_ELEMS = 1 << 18  # 1 MiB of float32 rows per chunk
_EMB_KEY = re.compile(r"(^|\.)emb_l\.\d+\.weight$")
_Q_DTYPE = {8: torch.int8, 4: torch.uint8}


@dataclass(frozen=True)
class QuantizedTable:
    """A row-wise symmetric quantized table: ``w ~ q * scale[:, None]`` (module docstring)."""

    q: torch.Tensor  # int8 (n, d) at 8 bits; uint8 (n, d // 2) at 4 bits (packed nibbles)
    scale: torch.Tensor  # (n,) scale_dtype, >= 0; 0 for an all-zero row
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        n, c = self.q.shape
        return n, c * 2 if self.bits == 4 else c


def _check(weight: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> None:
    if bits not in QMAX:
        raise ValueError(f"bits: {bits} is not supported (expected 8 or 4)")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype: {scale_dtype} (expected bfloat16, float16 or float32)")
    if weight.dim() != 2 or weight.dtype != torch.float32:
        raise ValueError(
            f"weight: expected a float32 table (rows, dim), got {weight.dtype} "
            f"of shape {tuple(weight.shape)}"
        )
    if bits == 4 and weight.shape[1] % 2:
        raise ValueError(
            f"weight: 4-bit rows pack two values per byte, so the width must be even; "
            f"got width {weight.shape[1]} (use bits=8)"
        )


def _scales(
    w: torch.Tensor, qmax: int, scale_dtype: torch.dtype, r0: int, amax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales of a row chunk ``w: (r, d)`` -> (stored scale (r,) scale_dtype, its float32 value);
    ``amax``: the rows' largest |w| if given (of whole rows, when ``w`` is a column slice)."""
    if amax is None:
        amax = w.abs().amax(1) if w.shape[1] else w.new_zeros(w.shape[0])  # (r,)
    if not torch.isfinite(amax).all():
        bad = r0 + int((~torch.isfinite(amax)).nonzero()[0])
        raise ValueError(f"weight: row {bad} holds inf or NaN; it cannot be quantized")
    exact = amax / qmax
    s = exact.to(scale_dtype)
    s = torch.where(
        s.float() < exact, torch.nextafter(s, s.new_tensor(float("inf"))), s
    )  # round up
    if not torch.isfinite(s).all():
        bad = r0 + int((~torch.isfinite(s)).nonzero()[0])
        raise ValueError(
            f"weight: row {bad}'s scale {float(exact[bad - r0]):.3g} overflows "
            f"{scale_dtype} (use scale_dtype=torch.bfloat16 or float32)"
        )
    return s, s.float()


def _grid(w: torch.Tensor, sf: torch.Tensor, qmax: int, out: torch.Tensor) -> torch.Tensor:
    """out = clamp(round(w / scale), -qmax, qmax) in float32, for a row chunk (all-zero rows: 0).

    ``+ 0.0`` turns the -0.0 of small negatives into +0.0, as an integer q = 0 dequantizes.
    """
    div = torch.where(sf == 0, torch.ones_like(sf), sf)  # w is 0 wherever the scale is
    torch.div(w, div[:, None], out=out)
    return out.round_().clamp_(-qmax, qmax).add_(0.0)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 (r, d) in [-7, 7] -> uint8 (r, d / 2): low nibble column 2j, high nibble 2j + 1."""
    u = q.view(torch.uint8).view(q.shape[0], -1, 2) & 0x0F
    return u[..., 0] | (u[..., 1] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """uint8 (r, c) -> int8 (r, 2c): the nibbles, sign-extended from 4 bits."""
    u = torch.stack([p & 0x0F, p >> 4], dim=-1).view(torch.int8)  # (r, c, 2) in [0, 15]
    return ((u ^ 8) - 8).view(p.shape[0], -1)


def quantize_rows(
    weight: torch.Tensor,
    bits: int = 8,
    *,
    scale_dtype: torch.dtype = torch.bfloat16,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    threads: int | None = 1,
) -> QuantizedTable:
    """Quantize ``weight: float32 (n, d)`` row by row (symmetric, 8 or 4 bits; module docstring)."""
    _check(weight, bits, scale_dtype)
    w = weight.detach()
    n, d = w.shape
    qmax = QMAX[bits]
    q = torch.empty((n, d if bits == 8 else d // 2), dtype=_Q_DTYPE[bits], device=w.device)
    scale = torch.empty(n, dtype=scale_dtype, device=w.device)
    with torch_threads(threads):
        buf = w.new_empty(0)
        for r0, r1 in row_chunks(n, d, chunk_elems):
            s, sf = _scales(w[r0:r1], qmax, scale_dtype, r0)
            scale[r0:r1] = s
            g = _grid(w[r0:r1], sf, qmax, buf.resize_(r1 - r0, d)).to(torch.int8)  # (r, d)
            q[r0:r1] = g if bits == 8 else pack_int4(g)
    return QuantizedTable(q, scale, bits)


def dequantize(
    table: QuantizedTable, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS, threads: int | None = 1
) -> torch.Tensor:
    """``q * scale[:, None]`` -> float32 (n, d); pruned (q = 0) entries are +0.0."""
    n, d = table.shape
    out = torch.empty(n, d, device=table.q.device)
    with torch_threads(threads):
        for r0, r1 in row_chunks(n, d, chunk_elems):
            q = table.q[r0:r1]
            q = q if table.bits == 8 else unpack_int4(q)
            torch.mul(q.to(torch.float32), table.scale[r0:r1].float()[:, None], out=out[r0:r1])
    return out


def quantize_dequantize(
    weight: torch.Tensor,
    bits: int = 8,
    out: torch.Tensor | None = None,
    *,
    scale_dtype: torch.dtype = torch.bfloat16,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    threads: int | None = 1,
    row_amax: torch.Tensor | None = None,
) -> torch.Tensor:
    """The float32 table the quantized one stands for, written into ``out`` (None: a new tensor;
    ``out`` may be ``weight``: in place). Row chunks: temporaries O(chunk_elems). Returns ``out``.

    Bit-identical to ``dequantize(quantize_rows(weight, bits))``. ``row_amax`` (n,): each row's
    largest |w| if ``weight`` is a column slice of a table (the whole rows' scales apply).
    """
    _check(weight, bits, scale_dtype)
    w = weight.detach()
    n, d = w.shape
    if out is None:
        out = torch.empty(n, d, device=w.device)
    elif out.shape != w.shape or out.dtype != torch.float32:
        raise ValueError(
            f"out: expected float32 {tuple(w.shape)}, got {out.dtype} {tuple(out.shape)}"
        )
    qmax = QMAX[bits]
    with torch_threads(threads):
        buf = w.new_empty(0)
        for r0, r1 in row_chunks(n, d, chunk_elems):
            amax = None if row_amax is None else row_amax[r0:r1]
            _, sf = _scales(w[r0:r1], qmax, scale_dtype, r0, amax)
            g = _grid(w[r0:r1], sf, qmax, buf.resize_(r1 - r0, d))
            torch.mul(g, sf[:, None], out=out.detach()[r0:r1])
    return out


def quantize_dequantize_tables(
    weights: Sequence[torch.Tensor],
    bits: int = 8,
    out: Sequence[torch.Tensor] | None = None,
    *,
    scale_dtype: torch.dtype = torch.bfloat16,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    workers: int | None = None,
    row_amax: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """:func:`quantize_dequantize` of every table, into ``out`` (None: in place), over
    ``workers`` threads (:func:`.chunks.map_tables`); ``row_amax``: one per table, if given."""
    ws = [w.detach() for w in weights]
    dst = ws if out is None else [o.detach() for o in out]

    def one(i: int) -> torch.Tensor:
        return quantize_dequantize(
            ws[i],
            bits,
            dst[i],
            scale_dtype=scale_dtype,
            chunk_elems=chunk_elems,
            threads=None,
            row_amax=None if row_amax is None else row_amax[i],
        )

    return map_tables(one, ws, workers)


def quantized_state_dict(
    state: dict[str, torch.Tensor], bits: int = 8, *, scale_dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """``state`` with every ``emb_l.K.weight`` replaced, in place in the key order, by
    ``emb_l.K.weight.q`` and ``emb_l.K.weight.scale``; other entries are the same objects."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if _EMB_KEY.search(name):
            try:
                qt = quantize_rows(t, bits, scale_dtype=scale_dtype)
            except ValueError as e:
                raise ValueError(f"state[{name!r}]: {e}") from None
            out[f"{name}.q"], out[f"{name}.scale"] = qt.q, qt.scale
        else:
            out[name] = t
    return out


def load_quantized_state_dict(qstate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse :func:`quantized_state_dict`: float32 ``emb_l.K.weight`` tables (the bit width is
    read from ``q``'s dtype: int8 = 8 bits, uint8 = 4 bits), other entries unchanged."""
    bits_of = {v: k for k, v in _Q_DTYPE.items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in qstate.items():
        base = name.rsplit(".", 1)[0]
        if _EMB_KEY.search(base) and name.endswith((".q", ".scale")):
            if base in out:
                continue
            q, scale = qstate.get(f"{base}.q"), qstate.get(f"{base}.scale")
            if q is None or scale is None:
                raise ValueError(
                    f"state[{name!r}]: {base}.q and {base}.scale come in pairs; "
                    f"the other is missing"
                )
            if q.dtype not in bits_of or q.dim() != 2 or scale.shape != (q.shape[0],):
                raise ValueError(
                    f"state[{base}.q]: expected int8 or uint8 (rows, cols) with a "
                    f"(rows,) scale, got {q.dtype} {tuple(q.shape)} and scale "
                    f"{tuple(scale.shape)}"
                )
            out[base] = dequantize(QuantizedTable(q, scale, bits_of[q.dtype]))
        else:
            out[name] = t
    return out


# ---------------------------------------------------------------------------- integer lookup

# torch's quantized embedding-bag kernels (fbgemm, CPU): one packed row is the unsigned codes, then
# the row's scale and bias (float32 at 8 bits, float16 at 4 bits); value = code * scale + bias.
_OPS = {8: "embedding_bag_byte_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets"}
_OFFSET = {8: 128, 4: 8}  # symmetric q -> unsigned code q + offset, bias = -offset * scale
_PACKED_SCALE = {8: torch.float32, 4: torch.float16}


def pack_rows(table: QuantizedTable) -> torch.Tensor:
    """``table`` as the packed rows of torch's quantized embedding-bag kernels -> uint8
    ``(n, d + 8)`` at 8 bits, ``(n, d / 2 + 4)`` at 4 bits. Code ``q + 128`` (``q + 8``) and bias
    ``-128 * scale`` (``-8 * scale``), so a code stands for ``q * scale`` and q = 0 for exactly
    0.0. Raises ValueError when a 4-bit scale is not exactly a float16 (the kernels' scale type)."""
    bits, q, scale = table.bits, table.q, table.scale.float()
    if bits == 8:
        codes = (q.to(torch.int16) + _OFFSET[8]).to(torch.uint8)  # (n, d)
    else:
        u = (unpack_int4(q) + _OFFSET[4]).view(torch.uint8)  # (n, d) in [1, 15]
        codes = u[:, 0::2] | (u[:, 1::2] << 4)  # column 2j in the low nibble, as pack_int4
    s = scale.to(_PACKED_SCALE[bits])
    if not torch.equal(s.float(), scale):
        bad = int((s.float() != scale).nonzero()[0])
        raise ValueError(
            f"scale: row {bad}'s scale {float(scale[bad]):.6g} is not a {s.dtype} value, the "
            f"scale type of torch's {bits}-bit embedding-bag kernel (use bits=8)"
        )
    rows = torch.stack([s, -_OFFSET[bits] * s], 1)  # (n, 2): scale, bias (both exact)
    return torch.cat([codes, rows.view(torch.uint8)], 1)


def unpack_rows(packed: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> QuantizedTable:
    """Reverse :func:`pack_rows`: the :class:`QuantizedTable` whose scales were ``scale_dtype``."""
    width = packed.shape[1] - 2 * torch.empty((), dtype=_PACKED_SCALE[bits]).element_size()
    codes, rows = packed[:, :width], packed[:, width:].contiguous()
    scale = rows.view(_PACKED_SCALE[bits])[:, 0].to(scale_dtype)
    if bits == 8:
        q = (codes.to(torch.int16) - _OFFSET[8]).to(torch.int8)
    else:
        u = torch.stack([codes & 0x0F, codes >> 4], -1).view(codes.shape[0], -1)  # (n, d)
        q = pack_int4(u.view(torch.int8) - _OFFSET[4])
    return QuantizedTable(q.contiguous(), scale, bits)


class QuantizedEmbeddingBag(nn.Module):
    """``nn.EmbeddingBag(mode="sum")`` over an int8 or int4 :class:`QuantizedTable`, looked up in
    integers by torch's quantized embedding-bag kernels (``torch.ops.quantized.embedding_bag_
    {byte,4bit}_rowwise_offsets``, CPU only); inference only.

    The table is held once, packed (:func:`pack_rows`, buffer ``packed``); :meth:`table` gives the
    :class:`QuantizedTable` back, bit for bit. Forward: 2-D ``(B, L)`` input, or 1-D input with
    ``offsets``; optional ``per_sample_weights``; -> float32 ``(bags, d)``. Each looked-up value
    is ``code * scale + bias``, the dequantised ``q * scale`` up to the kernel's rounding; q = 0
    (a pruned weight) gives exactly 0.0 (``tests/test_export.py`` states the tolerance).
    """

    def __init__(self, table: QuantizedTable) -> None:
        super().__init__()
        if table.bits not in _OPS:
            raise ValueError(f"table.bits: expected 8 or 4, got {table.bits}")
        self.num_embeddings, self.embedding_dim = table.shape
        self.bits, self.scale_dtype = table.bits, table.scale.dtype
        self.register_buffer("packed", pack_rows(table))

    def table(self) -> QuantizedTable:
        """The quantized table (q and scales as :func:`quantize_rows` made them)."""
        return unpack_rows(self.packed, self.bits, self.scale_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}"

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input.dim() == 2 and offsets is None:
            bags, per_bag = input.shape
            offsets = torch.arange(0, bags * per_bag, per_bag, device=input.device)
        elif input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(
                "input: expected 2-D (B, L) without offsets, or 1-D with 1-D offsets; got input "
                f"{tuple(input.shape)}, offsets {None if offsets is None else tuple(offsets.shape)}"
            )
        weights = None if per_sample_weights is None else per_sample_weights.reshape(-1).float()
        op = getattr(torch.ops.quantized, _OPS[self.bits])
        # (weight, indices, offsets, scale_grad_by_freq, mode=sum, pruned_weights,
        #  per_sample_weights, compressed_indices_mapping, include_last_offset)
        return op(
            self.packed,
            input.reshape(-1).long().contiguous(),
            offsets.long().contiguous(),
            False,
            0,
            False,
            weights,
            None,
            False,
        )


def quantized_model(
    model: nn.Module, bits: int = 8, *, scale_dtype: torch.dtype = torch.bfloat16
) -> nn.Module:
    """A shallow copy of the DLRM ``model`` (MLPs shared) whose dense tables are
    :class:`QuantizedEmbeddingBag` s of :func:`quantize_rows` of their weights, for inference."""
    tables = []
    for k, table in enumerate(model.emb_l):
        try:
            tables.append(
                QuantizedEmbeddingBag(quantize_rows(table.weight, bits, scale_dtype=scale_dtype))
            )
        except ValueError as e:
            raise ValueError(f"emb_l.{k}: {e}") from None
    return with_tables(model, tables)
