"""Integer embedding lookup: int8 / int4 tables through torch's quantized kernels against float32.

    python -m benchmarks.int_lookup --scale small    # tables capped at 200k rows
    python -m benchmarks.int_lookup --scale kaggle   # 26 tables, 33.8M rows

A DLRM with the Kaggle table sizes (capped at ``small``/``tiny``) and its reference init. Paths:
``float32`` (``nn.EmbeddingBag`` tables, what the sweep scores after dequantising), ``int8`` and
``int4`` (:func:`lit_dlrm.sparsity.quantize.quantized_model`: the integer tables looked up by
``torch.ops.quantized.embedding_bag_{byte,4bit}_rowwise_offsets``). For each batch size (random
ids), two measurements: the 26 table lookups alone, and the whole model's forward: one warm-up
round, then ``repeats`` rounds in ABBA order (:mod:`benchmarks.harness`). Same work: the integer
model's logits within 1e-5 of the sweep's dequantised simulation on the batch.
"""

from __future__ import annotations

import copy
from functools import partial

import torch

from benchmarks.harness import OURS, REF, REPEATS, WorkMismatch, alternate, compare, main_for, timed
from benchmarks.sparsify import CAPS, table_sizes

BATCHES = {"kaggle": (16_384, 1_024), "small": (16_384, 1_024), "tiny": (256,)}
MIB = 2**20


def lookups(model, sparse: torch.Tensor) -> list[torch.Tensor]:
    """The 26 tables' lookups of a batch, the part the table format changes."""
    return model.embed(sparse)


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    """Every (batch, what, integer path) of ``scale`` against float32: rows of the harness."""
    repeats = repeats or REPEATS[scale]
    from lit_dlrm.model import DLRM
    from lit_dlrm.sparsity.compact import table_bytes
    from lit_dlrm.sparsity.quantize import quantize_dequantize_tables, quantized_model

    sizes = table_sizes(scale)
    torch.manual_seed(0)
    model = DLRM(sizes).eval()
    models = {
        "float32": model,
        "int8": quantized_model(model, 8),
        "int4": quantized_model(model, 4),
    }
    simulated = {}
    for bits in (8, 4):
        simulated[bits] = copy.deepcopy(model)
        quantize_dequantize_tables([t.weight for t in simulated[bits].emb_l], bits)
    bytes_of = {
        "float32": table_bytes(model),
        **{p: sum(t.packed.numel() for t in models[p].emb_l) for p in ("int8", "int4")},
    }
    g = torch.Generator().manual_seed(1)
    rows = []
    for batch in BATCHES[scale]:
        dense = torch.log1p(torch.randint(0, 1000, (batch, 13), generator=g).float())
        sparse = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in sizes], 1)
        with torch.inference_mode():
            for p, b in (("int8", 8), ("int4", 4)):
                diff = float((models[p](dense, sparse) - simulated[b](dense, sparse)).abs().max())
                if diff > 1e-5:
                    raise WorkMismatch(
                        f"int_lookup {p} batch {batch}: logits differ from the dequantised "
                        f"simulation by {diff:.3g} (expected <= 1e-5)"
                    )
            for what, fn in (("lookups", lookups), ("forward", None)):
                sides = {
                    p: partial(timed, partial(fn, m, sparse) if fn else partial(m, dense, sparse))
                    for p, m in models.items()
                }
                samples = alternate(sides, repeats, warmup=1)
                for p in ("int8", "int4"):
                    rows.append(
                        compare(
                            f"{what} {p} batch {batch}",
                            "s",
                            {OURS: samples[p], REF: samples["float32"]},
                            note=f"{p} tables ({bytes_of[p] / MIB:,.1f} MiB) vs float32 "
                            f"({bytes_of['float32'] / MIB:,.1f} MiB); logits within 1e-5 of "
                            "the dequantised simulation",
                        )
                    )
    return rows


def main(argv: list[str] | None = None) -> None:
    main_for("int_lookup", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
