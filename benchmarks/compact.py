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
  compact, and the reference's COO path (:func:`callbacks.timing.coo_forward`). Warm-up, then
  ``repeats`` rounds, each running the three paths once in a rotated order, so that the noise of
  a shared machine falls on all three alike; medians; ``max_abs_diff`` = max |compact logit -
  dense logit| on the batch.

Each block shape runs in a fresh process (one copy of the tables plus one compact copy alive);
``peak_mib`` is that process's peak RSS (``VmHWM``). Writes ``benchmarks/results/
compact_<scale>.csv`` and ``.md`` (``compact_<scale>_<k>threads`` with ``--threads k``, torch's
thread count; by default torch's own choice); ``run(scale)`` returns the rows of
benchmarks/run.py's table. The children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the
environment sets it (why: ``docs/design.md``, Threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.memory import peak_rss_mib
from benchmarks.sparsify import CAPS, REPO, RESULTS, table_sizes
from benchmarks.tables import markdown_table, write_results

BATCHES = {"kaggle": (16_384, 1_024), "small": (16_384, 1_024), "tiny": (256,)}
REPEATS = {"kaggle": 20, "small": 20, "tiny": 2}
LEVELS = (0.5, 0.9, 0.99)
BLOCKS = ((1, 1), (1, 4))
MIB = 2**20


def timed_rounds(paths: dict, repeats: int, warmup: int = 2) -> dict[str, np.ndarray]:
    """Seconds of each path in each of ``repeats`` rounds, the paths' order rotated per round."""
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            paths[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: np.asarray(s) for name, s in seconds.items()}


def measure_block(scale: str, block: tuple[int, int], threads: int | None = None) -> list[dict]:
    """Every level of one block shape in this process -> one dict per (level, batch)."""
    if threads:
        torch.set_num_threads(threads)
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
                diff = float((compact(dense, sparse) - model(dense, sparse)).abs().max())
                paths = {"dense": model, "compact": compact, "coo": partial(coo_forward, model)}
                paths = {name: partial(f, dense, sparse) for name, f in paths.items()}
                times = timed_rounds(paths, REPEATS[scale])
                results.append(
                    {
                        **point,
                        "batch": batch,
                        **{f"{k}_s": float(np.median(v)) for k, v in times.items()},
                        # paired: the median of each round's ratio (drifting load cancels)
                        "compact_ratio": float(np.median(times["compact"] / times["dense"])),
                        "coo_ratio": float(np.median(times["coo"] / times["dense"])),
                        "max_abs_diff": diff,
                        "threads": torch.get_num_threads(),
                    }
                )
        del compact
    peak = peak_rss_mib()
    return [{**r, "peak_mib": peak} for r in results]


def _isolated(scale: str, block: tuple[int, int], threads: int | None) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.compact",
        "--scale",
        scale,
        "--child",
        f"{block[0]}x{block[1]}",
    ]
    cmd += ["--threads", str(threads)] if threads else []
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}  # read when the OpenMP runtime starts
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"compact benchmark, block {block} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def detail_table(points: list[dict]) -> list[dict]:
    """The per-point table of compact_<scale>.md: bytes in MiB, ratios to dense."""
    rows = []
    for p in points:
        rows.append(
            {
                "block": p["block"],
                "level": p["level"],
                "batch": p["batch"],
                "dense_mib": round(p["dense_bytes"] / MIB, 1),
                "compact_mib": round(p["compact_bytes"] / MIB, 1),
                "compact/dense bytes": round(p["compact_bytes"] / p["dense_bytes"], 3),
                "coo/dense bytes": round(p["coo_bytes"] / p["dense_bytes"], 3),
                "dense_s": round(p["dense_s"], 5),
                "compact_s": round(p["compact_s"], 5),
                "coo_s": round(p["coo_s"], 5),
                "compact/dense time": round(p["compact_ratio"], 3),
                "coo/dense time": round(p["coo_ratio"], 3),
                "build_s": round(p["build_s"], 2),
                "max_abs_diff": f"{p['max_abs_diff']:.1e}",
                "peak_mib": round(p["peak_mib"]),
            }
        )
    return rows


def harness_rows(points: list[dict]) -> list[dict]:
    """Rows of benchmarks/run.py's table (ratio > 1: lit_dlrm's compact tables are better)."""
    rows = []
    for p in points:
        name = f"L1 {p['block']} {p['level']:g}"
        if p["batch"] == max(q["batch"] for q in points):  # bytes and build once per point
            rows.append(
                {
                    "stage": f"compact bytes {name}",
                    "unit": "MiB",
                    "lit_dlrm": p["compact_bytes"] / MIB,
                    "reference": p["dense_bytes"] / MIB,
                    "ratio": p["dense_bytes"] / p["compact_bytes"],
                    "lit_dlrm_peak_mib": p["peak_mib"],
                    "reference_peak_mib": None,
                    "floor": None,
                    "note": "tables in memory, compact vs dense (= the reference's COO path); "
                    f"compact/dense {p['compact_bytes'] / p['dense_bytes']:.3f}; "
                    f"as torch.sparse_coo {p['coo_bytes'] / MIB:,.1f} MiB "
                    f"({p['coo_bytes'] / p['dense_bytes']:.2f}x dense)",
                }
            )
            rows.append(
                {
                    "stage": f"compact build {name}",
                    "unit": "s",
                    "lit_dlrm": p["build_s"],
                    "reference": None,
                    "ratio": None,
                    "lit_dlrm_peak_mib": None,
                    "reference_peak_mib": None,
                    "floor": None,
                    "note": "compact_model from the pruned dense tables, once per grid point",
                }
            )
        rows.append(
            {
                "stage": f"forward compact {name} batch {p['batch']}",
                "unit": "s/batch",
                "lit_dlrm": p["compact_s"],
                "reference": p["dense_s"],
                "ratio": 1 / p["compact_ratio"],
                "lit_dlrm_peak_mib": None,
                "reference_peak_mib": None,
                "floor": None,
                "note": "whole model, compact vs dense tables: "
                f"compact/dense {p['compact_ratio']:.2f}x; "
                f"reference COO path {p['coo_s']:.4g} s ({p['coo_ratio']:.2f}x dense); "
                f"max |logit diff| {p['max_abs_diff']:.1e}",
            }
        )
    return rows


def run(
    scale: str = "small",
    out_dir: str | Path | None = RESULTS,
    isolate: bool = True,
    threads: int | None = None,
) -> list[dict]:
    """Every block shape and level at ``scale``: writes compact_<scale>.csv/.md, returns run.py's
    rows."""
    points = []
    for block in BLOCKS:
        points += (
            _isolated(scale, block, threads) if isolate else measure_block(scale, block, threads)
        )
    detail = detail_table(points)
    sizes = table_sizes(scale)
    text = (
        f"# Compact tables, scale `{scale}`\n\n{sum(sizes):,} rows x 16 float32 in 26 tables "
        f"({sum(sizes) * 64 / MIB:,.0f} MiB), L1 pruning; torch {torch.__version__}, "
        f"{points[0]['threads']} threads (OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'PASSIVE' if isolate else 'unset')}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}; `python -m benchmarks.compact --scale {scale}"
        f"{f' --threads {threads}' if threads else ''}`. Forward times: whole model, one batch, "
        f"median of {REPEATS[scale]} rounds with the three paths in rotated order; the time ratios "
        "are the medians of each round's ratio (robust to load that drifts between rounds). "
        "peak_mib: peak RSS of the process measuring that block shape (one copy of the dense "
        "tables + one compact copy).\n\n" + markdown_table(detail, list(detail[0]))
    )
    if out_dir is not None:
        write_results(
            out_dir, f"compact_{scale}" + (f"_{threads}threads" if threads else ""), detail, text
        )
    print(text)
    return harness_rows(points)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(CAPS), default="small")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one block shape, print JSON
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a count >= 1, got {args.threads}")
    if args.child:
        height, width = (int(x) for x in args.child.split("x"))
        print(json.dumps(measure_block(args.scale, (height, width), args.threads)))
        return
    run(args.scale, args.out_dir, threads=args.threads)


if __name__ == "__main__":
    main()
