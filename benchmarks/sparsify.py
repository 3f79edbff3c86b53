"""Time sparsity grid points: lit_dlrm's in-place pruning versus torch's DataNormSparsifier.

    python -m benchmarks.sparsify --scale kaggle   # 26 tables, 33.8M rows (minutes)
    python -m benchmarks.sparsify --scale small    # tables capped at 200k rows (seconds)

Tables get the Kaggle row counts (capped at `small`/`tiny` scale), width 16 and DLRM's init
U(-sqrt(1/n), sqrt(1/n)), generated in chunks. Each measured stage runs in a fresh subprocess, so
its peak RSS is clean; "extra" = the child's peak RSS (VmHWM) minus its RSS once the tables
are built, i.e. what the stage adds over the loaded tables:

* `floor`: clone every table (one read + one write of the tables, fresh memory);
* `lit_dlrm <norm> <block>`: `prune` (in place) at level 0.5 (time is flat in the level);
* `reference <norm> <block>`: DataNormSparsifier `step()` + `squash_mask()` (also in place) at
  level 0.5. At the kaggle scale only L1 is run per block shape: the reference's cost does not
  depend on the norm (it sorts the same number of scores; see PyTorch's data-sparsifier DLRM
  benchmark, `torch/ao/pruning/_experimental/data_sparsifier/benchmarks`);
* `grid lit_dlrm`: all 80 points, run as the sweep runs them: per (norm, block) series one
  `cuts_for_levels` (2 counting passes for all 20 levels), then per level one `apply_cuts` from
  the untouched dense tables into pruned buffers that are reused from point to point (what
  `Sparsify` does in a sweep; allocating them is included). Restoring the model after a point is
  swapping the dense tensors back (free), so nothing else is paid per point. The reference's
  grid is its measured per-point time x 80 (every point costs the same there).

`run(scale)` returns rows in the common benchmark schema (stage, unit, lit_dlrm, reference,
ratio = reference / lit_dlrm, lit_dlrm_peak_mib, reference_peak_mib (extra over the loaded
tables), floor, note) and writes `benchmarks/results/sparsify_<scale>.csv` and `.md`
(atomically). `run("tiny", isolate=False)` is the smoke-test entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.memory import peak_rss_mib
from benchmarks.tables import markdown_table, seconds_row, write_results
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.sparsity.chunks import row_chunks
from lit_dlrm.sparsity.prune import apply_cuts, cuts_for_levels, prune
from lit_dlrm.sweep.grid import DEFAULT_LEVELS, default_grid

DIM = 16
CAPS = {"kaggle": None, "small": 200_000, "tiny": 2_000}
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COMBOS = [("L1", (1, 1)), ("L2", (1, 1)), ("L1", (1, 4)), ("L2", (1, 4))]


def table_sizes(scale: str) -> list[int]:
    cap = CAPS[scale]
    return [n if cap is None else min(n, cap) for n in KAGGLE_TABLE_SIZES]


def build_tables(
    sizes: list[int], dim: int = DIM, seed: int = 0, chunk_rows: int = 1 << 18
) -> list[torch.Tensor]:
    """Random tables like DLRM's init, U(-sqrt(1/n), sqrt(1/n)), without big temporaries."""
    g = torch.Generator().manual_seed(seed)
    tables = []
    for n in sizes:
        t = torch.empty(n, dim)  # (n, dim)
        a = (1.0 / n) ** 0.5
        for r0, r1 in row_chunks(n, dim, chunk_rows * dim):
            part = t[r0:r1]
            torch.rand(part.shape, generator=g, out=part)
            part.mul_(2 * a).sub_(a)
        tables.append(t)
    return tables


# ------------------------------------------------------------------------------------ stages


def stage_floor(tables):
    t0 = time.perf_counter()
    copies = [t.clone() for t in tables]
    dt = time.perf_counter() - t0
    del copies
    return dt


def stage_ours(tables, norm, block, level=0.5):
    t0 = time.perf_counter()
    prune(tables, norm, block, level)
    return time.perf_counter() - t0


def stage_reference(tables, norm, block, level=0.5):
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier

    sp = DataNormSparsifier(sparsity_level=level, sparse_block_shape=block, norm=norm)
    params = [torch.nn.Parameter(t, requires_grad=False) for t in tables]
    for i, p in enumerate(params):
        sp.add_data(f"emb_l_{i}", p)
    t0 = time.perf_counter()
    sp.step()
    sp.squash_mask()
    return time.perf_counter() - t0


def stage_grid(tables):
    """All 80 points as the sweep runs them (module docstring) -> (seconds, note)."""
    t0 = time.perf_counter()
    buffers = [torch.empty_like(t) for t in tables]
    points = 0
    for norm, block in COMBOS:
        series = cuts_for_levels(tables, norm, block, DEFAULT_LEVELS)
        for level in DEFAULT_LEVELS:
            apply_cuts(tables, series.for_level(level), norm, block, out=buffers)
            points += 1
    assert points == len(default_grid())
    return time.perf_counter() - t0, f"all {points} points run"


def run_stage(name: str, scale: str) -> dict:
    """Run one stage in this process: build the tables, time, report peak RSS."""
    torch.manual_seed(0)
    tables = build_tables(table_sizes(scale))
    rss_tables = peak_rss_mib()
    note = ""
    if name == "floor":
        sec = stage_floor(tables)
    elif name.startswith("lit_dlrm"):
        _, norm, block = name.split()
        sec = stage_ours(tables, norm, _parse_block(block))
    elif name.startswith("reference"):
        _, norm, block = name.split()
        sec = stage_reference(tables, norm, _parse_block(block))
    elif name == "grid lit_dlrm":
        sec, note = stage_grid(tables)
    else:
        raise ValueError(f"unknown stage {name!r}")
    return {
        "stage": name,
        "seconds": sec,
        "peak_rss_mib": peak_rss_mib(),
        "tables_rss_mib": rss_tables,
        "note": note,
    }


def _parse_block(s: str) -> tuple[int, int]:
    h, w = s.split("x")
    return int(h), int(w)


def _run_isolated(name: str, scale: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.sparsify", "--child", name, "--scale", scale]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ report


def run(
    scale: str = "small",
    out_dir: str | os.PathLike | None = RESULTS,
    isolate: bool = True,
    full_grid: bool | None = None,
) -> list[dict]:
    """Measure every stage and write the CSV + Markdown table; returns the rows (common schema).

    `full_grid` is accepted for compatibility and ignored: the grid is always run in full.
    """
    sizes = table_sizes(scale)
    model_mib = sum(sizes) * DIM * 4 / 2**20
    if isolate:
        measure = lambda n: _run_isolated(n, scale)  # noqa: E731
    else:
        measure = lambda n: run_stage(n, scale)  # noqa: E731
    extra = lambda m: round(m["peak_rss_mib"] - m["tables_rss_mib"], 1)  # noqa: E731
    floor = measure("floor")
    fl = floor["seconds"]
    rows = [
        seconds_row(
            "floor (clone all tables)",
            fl,
            None,
            extra(floor),
            None,
            floor_s=None,
            note="one read + one write of the tables into fresh memory",
        )
    ]
    ref_cache: dict[tuple[int, int], dict] = {}
    for norm, block in COMBOS:
        b = f"{block[0]}x{block[1]}"
        ours = measure(f"lit_dlrm {norm} {b}")
        note = f"in place, level 0.5; {ours['seconds'] / fl:.1f}x floor"
        if scale == "kaggle" and block in ref_cache:  # norm does not change its cost
            ref = ref_cache[block]
            note += f"; reference measured with {ref['stage'].split()[1]}"
        else:
            ref = measure(f"reference {norm} {b}")
            ref_cache[block] = ref
        rows.append(
            seconds_row(
                f"one point {norm} {block}",
                ours["seconds"],
                ref["seconds"],
                extra(ours),
                extra(ref),
                floor_s=fl,
                note=note,
            )
        )
    grid = measure("grid lit_dlrm")
    points = rows[1:]
    ref_point = sum(r["reference"] for r in points) / len(points)
    rows.append(
        seconds_row(
            "grid (80 points)",
            grid["seconds"],
            ref_point * 80,
            extra(grid),
            max(r["reference_peak_mib"] for r in points),
            floor_s=fl * 80,
            note=f"lit_dlrm: {grid['note']}, per series 2 counting passes for all 20 levels + "
            "1 apply per level into reused buffers (allocation included; restore = "
            "swapping the dense tensors back, free); reference = mean measured point "
            "x 80; floor = clone x 80",
        )
    )
    text = _header(scale, model_mib, floor) + markdown_table(rows, list(rows[0]))
    if out_dir is not None:
        write_results(out_dir, f"sparsify_{scale}", rows, text)
    print(text)
    return rows


def _header(scale, model_mib, floor) -> str:
    return (
        f"Sparsify, scale={scale}: 26 tables x {DIM}, {model_mib:.0f} MiB fp32; torch "
        f"{torch.__version__}, lit_dlrm single-threaded torch ops over 2 worker threads. "
        f"ratio = reference / lit_dlrm (speedup). *_peak_mib = EXTRA peak RSS over the loaded "
        f"tables (process with tables alone: {floor['tables_rss_mib']:.0f} MiB), each stage in "
        f"a fresh process. Both sides prune in place for one point.\n\n"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=sorted(CAPS), default="small")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one stage, print JSON
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_stage(args.child, args.scale)))
        return
    run(args.scale, args.out_dir)


if __name__ == "__main__":
    main()
