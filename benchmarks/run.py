"""Every benchmark side by side with the reference approach, in one table.

    python -m benchmarks.run --scale small          # a few minutes (from the checkout's root)
    python -m benchmarks.run --scale kaggle         # Kaggle table sizes, synthetic weights and data
    python -m benchmarks.run --scale small --only sparsify evaluate  # rerun two, keep the others
    python -m benchmarks.run --scale kaggle --only compact  # compact tables: bytes, forward time

Each stage is measured against its reference in the same run (these machines are noisy, so only
ratios measured side by side are worth quoting). The table (stage, lit_dlrm, reference, ratio,
peak memory of each, physical floor) is printed and written to
``benchmarks/results/run_<scale>.csv`` and ``.md``. At ``--scale kaggle`` the table ends with an
estimate of a full 80-point sweep, lit_dlrm's and the reference's, from the measured per-point
times.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks import (
    compact,
    compress,
    evaluate,
    global_threshold,
    preprocess,
    quantize,
    sparsify,
    train_throughput,
)
from benchmarks.tables import markdown_table, write_results

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "preprocess": preprocess.run,
    "train": train_throughput.run,
    "sparsify": sparsify.run,
    "compress": compress.run,
    "evaluate": evaluate.run,
    "compact": compact.run,
    "global": global_threshold.run,
    "quantize": quantize.run,
}
# tables written before the benchmark column: a stage's first word -> its benchmark
LEGACY = {
    "compress": "compress",
    "test": "evaluate",
    "forward": "evaluate",
    "preprocess": "preprocess",
    "floor": "sparsify",
    "one": "sparsify",
    "grid": "sparsify",
    "train": "train",
    "full": "estimate",
}
COLUMNS = [
    "benchmark",
    "stage",
    "unit",
    "lit_dlrm",
    "reference",
    "ratio",
    "lit_dlrm_peak_mib",
    "reference_peak_mib",
    "floor",
    "note",
]


def sweep_estimate(rows: list[dict], scale: str) -> list[dict]:
    """A full 80-point sweep at this scale, lit_dlrm's way and the reference's, from the stages.

    lit_dlrm: 56 tested points (level 0/1 and L2 (1,1) reuse), each = sparsify one point + both
    size measurements + one test loop over the test split + the timing (3 paths x 11 runs, the
    compact tables built once when the compact benchmark ran). Reference: 80 points, each =
    DataNormSparsifier step + deflate + its evaluation loop + 2 x 100 runs.
    """
    by_stage = {r["stage"]: r for r in rows}
    writes = [
        r
        for r in rows
        if r["stage"].startswith("compress")
        and r["stage"].endswith(" write")
        and "signed" not in r["stage"]
    ]
    needed = ["one point L1 (1, 4)", "test loop (one grid point)", "forward L1 (1, 4) 0.5"]
    if not writes or not all(name in by_stage for name in needed):
        return []
    point, loop, forward = (by_stage[n] for n in needed)
    ours_zip = sum(r["lit_dlrm"] for r in writes) / len(writes)  # mean over the measured levels
    deflate = sum(r["reference"] for r in writes) / len(writes)
    test_rows = evaluate.SCALES[scale][1]
    ours = (
        point["lit_dlrm"]
        + ours_zip
        + deflate
        + test_rows / loop["lit_dlrm"]
        + 11 * (forward["lit_dlrm"] + forward["reference"])
    )
    build, compact_forward = (
        by_stage.get("compact build L1 (1, 4) 0.5"),
        by_stage.get("forward compact L1 (1, 4) 0.5 batch 16384"),
    )
    if (
        build and compact_forward
    ):  # the sweep's third timing path: build the compact tables, time them
        ours += build["lit_dlrm"] + 11 * compact_forward["lit_dlrm"]
    theirs = (
        point["reference"]
        + deflate
        + test_rows / loop["reference"]
        + 100 * (forward["lit_dlrm"] + forward["reference"])
    )
    return [
        {
            "benchmark": "estimate",
            "stage": "full sweep, 80 points (estimate)",
            "unit": "s",
            "lit_dlrm": 56 * ours,
            "reference": 80 * theirs,
            "ratio": 80 * theirs / (56 * ours),
            "note": "per point: sparsify + deflate (+ zstd for lit_dlrm) "
            "+ one pass over the test split + dense/COO timing "
            "(+ compact build and timing for lit_dlrm, when measured); "
            "lit_dlrm tests 56 distinct masks, the reference 80 points",
        }
    ]


def kept_rows(table: Path, rerun: set[str]) -> list[dict]:
    """Rows of an earlier table at this scale from benchmarks not rerun now (``--only``)."""
    if not table.exists():
        return []
    with open(table, newline="") as fh:
        old = [
            {"benchmark": LEGACY.get(row["stage"].split()[0]), **row} for row in csv.DictReader(fh)
        ]
    old = [row for row in old if row["benchmark"] not in rerun and row["benchmark"] != "estimate"]
    numbers = ("lit_dlrm", "reference", "ratio", "lit_dlrm_peak_mib", "reference_peak_mib", "floor")
    return [
        {k: (float(v) if k in numbers and v != "" else v or None) for k, v in row.items()}
        for row in old
    ]


def fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write(rows: list[dict], scale: str, out: Path) -> Path:
    header = (
        f"# lit_dlrm vs the reference approach, scale `{scale}`\n\n"
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; `python -m benchmarks.run --scale {scale}`. "
        "ratio > 1: lit_dlrm is better (faster, or more samples/s); "
        "for forward rows it is COO time over dense time; "
        "for compact rows dense over compact (bytes or time: "
        "compact tables cost at most 10% more forward time while the ratio is >= 0.91).\n\n"
    )
    return write_results(
        out, f"run_{scale}", rows, header + markdown_table(rows, COLUMNS, fmt), COLUMNS
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "small", "kaggle"], default="small")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for name in args.only:
        start = time.perf_counter()
        rows += [{"benchmark": name, **row} for row in BENCHMARKS[name](args.scale)]
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    rows = kept_rows(args.out_dir / f"run_{args.scale}.csv", set(args.only)) + rows
    rows += sweep_estimate(rows, args.scale)
    path = write(rows, args.scale, args.out_dir)
    print(path.read_text())
    return rows


if __name__ == "__main__":
    main()
