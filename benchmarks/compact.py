"""Compact tables: bytes and whole-model forward time, dense vs compact vs the reference's COO.

    python -m benchmarks.compact --scale kaggle   # 26 tables, 33.8M rows (minutes)
    python -m benchmarks.compact --scale small    # tables capped at 200k rows

A DLRM with the Kaggle table sizes (capped at ``small``/``tiny``) and its reference init
(float32 tables U(-sqrt(1/n), sqrt(1/n))), pruned with lit_dlrm's own cuts (norm L1, block shapes
(1, 1) and (1, 4), levels 0.5, 0.9 and 0.99: ``cuts_for_levels`` once per block shape, then
``apply_cuts`` in place, level after level, the same masks as pruning the dense tables at each
level: a cut prunes every block scoring below it, and the blocks of a lower level score 0 now).
At each point:

* bytes: the tables in memory, dense (the reference's COO path keeps them), compact
  (:func:`lit_dlrm.sparsity.compact.compact_model`: block-CSR, or dense where that is smaller)
  and what ``torch.sparse_coo`` tables of the survivors would take (``coo_nbytes``);
* ``build_s``: building the compact tables from the pruned dense ones;
* forward: one batch (16384 and 1024 rows, random ids), the whole model three ways: dense,
  compact, and the reference's COO path (:func:`callbacks.timing.coo_forward`): one warm-up
  round, then ``repeats`` rounds in ABBA order (:mod:`benchmarks.harness`). Same work: every
  path's logits within 1e-4 of the dense model's on every run (``max_abs_diff``: compact).

Threads: torch's own choice (the machine's cores), as the sweep runs; the count is in the run
table.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from benchmarks.harness import (
    OURS,
    REF,
    REPEATS,
    Sample,
    alternate,
    check_same_work,
    compare,
    main_for,
    single,
    timed,
)
from benchmarks.sparsify import CAPS, table_sizes

BATCHES = {"kaggle": (16_384, 1_024), "small": (16_384, 1_024), "tiny": (256,)}
LEVELS = (0.5, 0.9, 0.99)
BLOCKS = ((1, 1), (1, 4))
MIB = 2**20


def measure_block(scale: str, block: tuple[int, int], repeats: int) -> list[dict]:
    """Every level of one block shape -> one dict per (level, batch)."""
    from callbacks.timing import coo_forward
    from lit_dlrm.model import DLRM
    from lit_dlrm.sparsity.compact import compact_model, coo_nbytes, table_bytes
    from lit_dlrm.sparsity.prune import apply_cuts, cuts_for_levels

    sizes = table_sizes(scale)
    torch.manual_seed(0)
    model = DLRM(sizes).eval()
    tables = [t.weight.data for t in model.emb_l]
    series = cuts_for_levels(tables, "L1", block, sorted(LEVELS))
    g = torch.Generator().manual_seed(1)
    batches = {}
    for batch in BATCHES[scale]:
        dense = torch.log1p(torch.randint(0, 1000, (batch, 13), generator=g).float())
        sparse = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in sizes], 1)
        batches[batch] = (dense, sparse)
    results = []
    for level in sorted(LEVELS):
        apply_cuts(tables, series.for_level(level), "L1", block)  # in place
        with torch.inference_mode():
            start = time.perf_counter()
            compact = compact_model(model, block[1])
            build_s = time.perf_counter() - start
            point = {
                "block": str(block),
                "level": level,
                "dense_bytes": table_bytes(model),
                "compact_bytes": table_bytes(compact),
                "coo_bytes": sum(coo_nbytes(t) for t in tables),
                "build_s": build_s,
            }
            for batch, (dense, sparse) in batches.items():
                reference = model(dense, sparse)
                paths = {"dense": model, "compact": compact, "coo": partial(coo_forward, model)}
                sides = {
                    name: partial(timed, partial(f, dense, sparse), lambda out: out)
                    for name, f in paths.items()
                }
                samples = alternate(sides, repeats, warmup=1)
                stage = f"forward L1 {block} {level:g} batch {batch}"
                check_same_work(
                    stage,
                    {"dense": [Sample(0, None, reference)], **samples},
                    lambda a, b: bool((a - b).abs().max() <= 1e-4),
                    "logits within 1e-4 of the dense model's",
                )
                diff = float((samples["compact"][0].work - reference).abs().max())
                results.append(
                    {
                        **point,
                        "batch": batch,
                        **{f"{k}_s": [x.value for x in v] for k, v in samples.items()},
                        "max_abs_diff": diff,
                        "threads": torch.get_num_threads(),
                    }
                )
        del compact
    return results


def harness_rows(points: list[dict]) -> list[dict]:
    """Rows of the harness's schema (ratio > 1: lit_dlrm's compact tables are better)."""
    rows = []
    for p in points:
        name = f"L1 {p['block']} {p['level']:g}"
        if p["batch"] == max(q["batch"] for q in points):  # bytes and build once per point
            row = single(
                f"compact bytes {name}",
                "MiB",
                [Sample(p["compact_bytes"] / MIB)],
                note="tables in memory, compact vs dense (= the reference's COO path keeps "
                f"them); as torch.sparse_coo {p['coo_bytes'] / MIB:,.1f} MiB "
                f"({p['coo_bytes'] / p['dense_bytes']:.2f}x dense)",
            )
            row[REF] = p["dense_bytes"] / MIB
            row["ratio"] = p["dense_bytes"] / p["compact_bytes"]
            rows.append(row)
            rows.append(
                single(
                    f"compact build {name}",
                    "s",
                    [Sample(p["build_s"])],
                    note="compact_model from the pruned dense tables, once per grid point",
                )
            )
        times = {k: [Sample(v) for v in p[f"{k}_s"]] for k in ("dense", "compact", "coo")}
        rows.append(
            compare(
                f"forward compact {name} batch {p['batch']}",
                "s/batch",
                {OURS: times["compact"], REF: times["dense"]},
                target=0.91,
                note=f"whole model, compact (lit_dlrm) vs dense tables (reference); max |logit "
                f"diff| {p['max_abs_diff']:.1e}",
            )
        )
        rows.append(
            compare(
                f"forward COO {name} batch {p['batch']}",
                "s/batch",
                {OURS: times["dense"], REF: times["coo"]},
                note="the reference's COO path (reference) vs the dense model (lit_dlrm)",
            )
        )
    return rows


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    """Every block shape and level at ``scale``: rows of the harness's schema."""
    repeats = repeats or REPEATS[scale]
    points = []
    for block in BLOCKS:
        points += measure_block(scale, block, repeats)
    return harness_rows(points)


def main(argv: list[str] | None = None) -> None:
    main_for("compact", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
