"""Integer embedding lookup: int8 / int4 tables through torch's quantized kernels against float32.

    python -m benchmarks.int_lookup --scale small    # tables capped at 200k rows
    python -m benchmarks.int_lookup --scale kaggle   # 26 tables, 33.8M rows

A DLRM with the Kaggle table sizes (capped at ``small``/``tiny``) and its reference init. Paths:
``float32`` (``nn.EmbeddingBag`` tables, what the sweep scores after dequantising), ``int8`` and
``int4`` (:func:`lit_dlrm.sparsity.quantize.quantized_model`: the integer tables looked up by
``torch.ops.quantized.embedding_bag_{byte,4bit}_rowwise_offsets``). For each batch size (random
ids), two measurements: the 26 table lookups alone, and the whole model's forward. Warm-up, then
``repeats`` rounds running the paths in rotated order (:func:`benchmarks.compact.timed_rounds`);
median, min and max seconds, and the median of each round's ratio to float32. ``max_abs_diff``:
max |logit| difference of the integer model against the sweep's dequantised simulation on the batch.
Writes ``benchmarks/results/int_lookup_<scale>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.compact import timed_rounds
from benchmarks.sparsify import CAPS, RESULTS, table_sizes
from benchmarks.tables import markdown_table, write_results

BATCHES = {"kaggle": (16_384, 1_024), "small": (16_384, 1_024), "tiny": (256,)}
REPEATS = {"kaggle": 20, "small": 20, "tiny": 2}
MIB = 2**20


def lookups(model, sparse: torch.Tensor) -> list[torch.Tensor]:
    """The 26 tables' lookups of a batch, the part the table format changes."""
    return model.embed(sparse)


def measure(scale: str) -> list[dict]:
    """Every (batch, what, path) of ``scale`` -> one dict each."""
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
            diff = {
                p: float((models[p](dense, sparse) - simulated[b](dense, sparse)).abs().max())
                for p, b in (("int8", 8), ("int4", 4))
            }
            for what, fn in (("lookups", lookups), ("forward", None)):
                paths = {
                    p: partial(fn, m, sparse) if fn else partial(m, dense, sparse)
                    for p, m in models.items()
                }
                times = timed_rounds(paths, REPEATS[scale])
                for p, t in times.items():
                    rows.append(
                        {
                            "batch": batch,
                            "what": what,
                            "path": p,
                            "median_s": float(np.median(t)),
                            "min_s": float(t.min()),
                            "max_s": float(t.max()),
                            "ratio_to_float32": float(np.median(t / times["float32"])),
                            "table_mib": bytes_of[p] / MIB,
                            "max_abs_diff": diff.get(p, 0.0),
                            "threads": torch.get_num_threads(),
                        }
                    )
    return rows


def run(scale: str = "small", out_dir: str | Path | None = RESULTS) -> list[dict]:
    """Measure ``scale`` and write int_lookup_<scale>.csv/.md; returns the rows."""
    rows = measure(scale)
    shown = [
        {
            **{k: r[k] for k in ("batch", "what", "path")},
            **{k: f"{r[k] * 1e3:.3f}" for k in ("median_s", "min_s", "max_s")},
            "x float32": f"{r['ratio_to_float32']:.2f}",
            "table MiB": f"{r['table_mib']:,.1f}",
            "max |logit diff|": f"{r['max_abs_diff']:.1e}",
        }
        for r in rows
    ]
    columns = list(shown[0])
    columns[3:6] = ["median ms", "min ms", "max ms"]
    shown = [dict(zip(columns, s.values())) for s in shown]
    sizes = table_sizes(scale)
    text = (
        f"# Integer embedding lookup, scale `{scale}`\n\n{sum(sizes):,} rows x 16 in 26 tables; "
        f"torch {torch.__version__}, {rows[0]['threads']} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; `python -m benchmarks.int_lookup --scale {scale}`. "
        f"Median, min and max of {REPEATS[scale]} rounds, paths in rotated order; `x float32`: "
        "median of each round's ratio to the float32 path. `max |logit diff|`: the integer "
        "model against the sweep's dequantised simulation. Measured on a shared machine: noisy."
        "\n\n" + markdown_table(shown, columns)
    )
    if out_dir is not None:
        write_results(out_dir, f"int_lookup_{scale}", rows, text)
    print(text)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(CAPS), default="small")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    run(args.scale, args.out_dir)


if __name__ == "__main__":
    main()
