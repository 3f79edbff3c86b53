"""Time and memory of row-wise quantisation: lit_dlrm's symmetric int8/int4 against torch's path.

    python -m benchmarks.quantize --scale kaggle   # 26 tables, 33.8M rows
    python -m benchmarks.quantize --scale small

Tables as in benchmarks/sparsify.py; each side works on its own copy, made before the timer, and
runs ``repeats`` times in ABBA order:

* `lit_dlrm`: what a quantised sweep point pays: `quantize_dequantize_tables` in place (the model
  the test scores) and `quantized_state_dict` (the integer tables and scales whose size the sweep
  measures), both timed;
* `reference`: the quantise step of torch's `post_training_sparse_quantize`: the tables as
  `nn.EmbeddingBag`s, `prepare` + `convert` with `float_qparams_weight_only_qconfig` (8 bits) or
  its `_4bit` variant (per-row affine quint8 / quint4x2), then `torch.dequantize` of every table.

Same work: each side's dequantised tables are the same on every run, and the two quantisers
differ by at most one step of each per row (``max|row| / qmax`` for lit_dlrm's symmetric grid plus
``(max - min) / (2**bits - 1)`` for torch's affine one), checked element by element. The
zstd_sparse sizes of the quantised and the float32 state dicts (level 0) are in the note.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings

import torch
from torch import nn

from benchmarks.harness import (
    OURS,
    REF,
    REPEATS,
    Sample,
    alternate,
    check_same_work,
    compare,
    main_for,
    timed,
)
from benchmarks.sparsify import CAPS, shared_tables
from lit_dlrm.sparsity.chunks import row_chunks
from lit_dlrm.sparsity.compression import zstd_sparse_size
from lit_dlrm.sparsity.quantize import QMAX, quantize_dequantize_tables, quantized_state_dict


def digest(tables: list[torch.Tensor]) -> str:
    h = hashlib.sha1()
    for t in tables:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def ours(tables, bits: int) -> tuple[Sample, list[torch.Tensor]]:
    copies = [t.clone() for t in tables]

    def point():
        quantize_dequantize_tables(copies, bits)
        state = {f"emb_l.{i}.weight": t for i, t in enumerate(tables)}
        return quantized_state_dict(state, bits)

    return timed(point, lambda _: digest(copies)), copies


def reference(tables, bits: int) -> tuple[Sample, list[torch.Tensor]]:
    from torch.ao.quantization import convert, prepare
    from torch.ao.quantization.qconfig import (
        float_qparams_weight_only_qconfig,
        float_qparams_weight_only_qconfig_4bit,
    )

    model = nn.Module()
    model.emb_l = nn.ModuleList()
    for t in tables:
        bag = nn.EmbeddingBag(1, t.shape[1], mode="sum")
        bag.weight = nn.Parameter(t.clone(), requires_grad=False)
        bag.qconfig = (
            float_qparams_weight_only_qconfig
            if bits == 8
            else float_qparams_weight_only_qconfig_4bit
        )
        model.emb_l.append(bag)
    out: list[torch.Tensor] = []

    def point():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(model, inplace=True)
            convert(model, inplace=True)
        out[:] = [torch.dequantize(bag.weight()) for bag in model.emb_l]

    return timed(point, lambda _: digest(out)), out


def within_one_step_each(tables, a, b, bits: int) -> None:
    """|a - b| <= max|row| / qmax + (max - min) / (2**bits - 1) per row, or AssertionError."""
    for i, (w, x, y) in enumerate(zip(tables, a, b)):
        for r0, r1 in row_chunks(w.shape[0], w.shape[1], 1 << 20):
            rows = w[r0:r1]
            bound = rows.abs().amax(1) / QMAX[bits] + (rows.amax(1) - rows.amin(1)) / (2**bits - 1)
            excess = ((x[r0:r1] - y[r0:r1]).abs().amax(1) - bound * (1 + 1e-3)).max()
            if excess > 1e-7:
                raise AssertionError(
                    f"quantize {bits} bits: table {i} rows {r0}-{r1}: the two quantisers differ "
                    f"by more than one step of each (by {float(excess):.3g} over)"
                )


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    repeats = repeats or REPEATS[scale]
    tables = list(shared_tables(scale))
    state = {f"emb_l.{i}.weight": t for i, t in enumerate(tables)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_bytes = zstd_sparse_size(state, tmp, measure_read=False).bytes
        for bits in (8, 4):
            (_, a), (_, b) = ours(tables, bits), reference(tables, bits)  # untimed check
            within_one_step_each(tables, a, b, bits)
            del a, b
            q_bytes = zstd_sparse_size(quantized_state_dict(state, bits), tmp).bytes
            samples = alternate(
                {
                    OURS: lambda b=bits: ours(tables, b)[0],
                    REF: lambda b=bits: reference(tables, b)[0],
                },
                repeats,
            )
            for side in samples:
                check_same_work(f"quantize {bits} bits {side}", {side: samples[side]})
            rows.append(
                compare(
                    f"quantise all tables, {bits} bits",
                    "s",
                    samples,
                    note="lit_dlrm: quantize_dequantize_tables + quantized_state_dict (what a "
                    "sweep point builds); reference: prepare + convert (affine float_qparams) "
                    "+ torch.dequantize; the two within one step of each; zstd_sparse bytes, "
                    f"level 0: {q_bytes:,} against float32 {dense_bytes:,} "
                    f"({dense_bytes / q_bytes:.2f}x smaller)",
                )
            )
    return rows


def main(argv=None) -> None:
    main_for("quantize", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
