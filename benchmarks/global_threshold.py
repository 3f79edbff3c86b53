"""Time and memory of global-threshold cuts: lit_dlrm's counting passes versus concatenate + select.

    python -m benchmarks.global_threshold --scale kaggle   # 26 tables, 33.8M rows (minutes)
    python -m benchmarks.global_threshold --scale small    # tables capped at 200k rows

Tables as in benchmarks/sparsify.py (Kaggle row counts, width 16, DLRM's uniform init). Each
(side, norm, block shape) runs in a fresh process; in it, after the tables are built:

* `lit_dlrm`: `global_cuts` for the 20 default levels (3 counting passes over all tables), then
  one level (0.9) applied with `apply_cuts` into pruned buffers allocated (and paged in) before,
  as the sweep's `Sparsify` reuses them: one more copy of the tables. For scale, the per-table
  series of the same levels (`cuts_for_levels`, 2 passes) is timed in the same process.
* `reference`: every block score concatenated in table order into one float32 array (2 GiB for
  (1, 1) at the Kaggle size), `numpy.partition` in place with all 18 non-trivial K at once
  (gives each level's threshold T = K-th smallest score), then per table and level the blocks
  below T and equal to T (ties go to the tables in order), from each table's scores computed
  whole. This is the lean way to do it naively: a stable `torch.sort` / `argsort` or
  `torch.kthvalue` of 540M scores adds int64 indices (4 GiB) and a copy on top.

Both sides' per-table counts are compared in the parent (they must be equal). Peak memory is
the process's VmHWM minus its RSS once the tables are built ("extra"), reset between the
cuts and the apply (``/proc/self/clear_refs``) so each step's own peak is reported.
Writes `benchmarks/results/global_threshold_<scale>.csv` and `.md` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.memory import peak_rss_mib, reset_peak, rss_mib
from benchmarks.sparsify import CAPS, DIM, REPO, build_tables, table_sizes
from benchmarks.tables import markdown_table, seconds_row, write_results
from lit_dlrm.sparsity.global_threshold import global_cuts
from lit_dlrm.sparsity.prune import apply_cuts, block_scores, cuts_for_levels, num_blocks
from lit_dlrm.sweep.grid import DEFAULT_LEVELS

RESULTS = Path(__file__).resolve().parent / "results"
COMBOS = [("L1", (1, 1)), ("L2", (1, 4))]
APPLY_LEVEL = 0.9


def ours(tables, norm, block) -> dict:
    global_cuts([tables[-1][:64]], norm, block, DEFAULT_LEVELS)  # warm-up: thread pool, first calls
    base = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    series = global_cuts(tables, norm, block, DEFAULT_LEVELS)
    cuts_s = time.perf_counter() - t0
    cuts_mib = peak_rss_mib() - base
    counts = {str(lv): [c.k for c in cuts] for lv, cuts in series.cuts.items()}
    t0 = time.perf_counter()
    cuts_for_levels(tables, norm, block, DEFAULT_LEVELS)
    per_table_s = time.perf_counter() - t0
    out = [torch.zeros_like(t) for t in tables]  # reused buffers: allocated and paged in before
    base = rss_mib()
    reset = reset_peak()
    t0 = time.perf_counter()
    apply_cuts(tables, series.for_level(APPLY_LEVEL), norm, block, out=out)
    apply_s = time.perf_counter() - t0
    apply_mib = peak_rss_mib() - base
    return {
        "cuts_s": cuts_s,
        "cuts_mib": cuts_mib,
        "per_table_s": per_table_s,
        "apply_s": apply_s,
        "apply_mib": apply_mib,
        "peak_reset": reset,
        "counts": counts,
    }


def reference(tables, norm, block) -> dict:
    """Concatenate every score, select the K-th smallest in place, count per table (docstring)."""
    base = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    nbs = [num_blocks(t.shape, block) for t in tables]
    scores = np.empty(sum(nbs), dtype=np.float32)  # (all blocks,)
    start = 0
    for t, nb in zip(tables, nbs):
        scores[start : start + nb] = block_scores(t, norm, block).reshape(-1).numpy()
        start += nb
    total = scores.size
    ks = [round(lv * total) for lv in DEFAULT_LEVELS]
    kth = sorted({k - 1 for k in ks if 0 < k < total})
    scores.partition(kth)  # in place: scores[k - 1] is the K-th smallest
    thresholds = {k: float(scores[k - 1]) for k in ks if 0 < k < total}
    del scores
    counts = {}
    below = {k: [] for k in thresholds}
    ties = {k: [] for k in thresholds}
    for t in tables:
        s = block_scores(t, norm, block)  # whole table
        for k, th in thresholds.items():
            below[k].append(int((s < th).sum()))
            ties[k].append(int((s == th).sum()))
        del s
    for lv, k in zip(DEFAULT_LEVELS, ks):
        if k <= 0 or k >= total:
            counts[str(float(lv))] = [0 if k <= 0 else nb for nb in nbs]
            continue
        left = k - sum(below[k])
        row = []
        for b, m in zip(below[k], ties[k]):
            take = min(m, left)
            left -= take
            row.append(b + take)
        counts[str(float(lv))] = row
    sec = time.perf_counter() - t0
    return {"cuts_s": sec, "cuts_mib": peak_rss_mib() - base, "counts": counts}


def run_stage(name: str, scale: str) -> dict:
    torch.manual_seed(0)
    tables = build_tables(table_sizes(scale))
    side, norm, block = name.split()
    h, w = block.split("x")
    block = (int(h), int(w))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    res = ours(tables, norm, block) if side == "lit_dlrm" else reference(tables, norm, block)
    return {"stage": name, "tables_rss_mib": rss_mib(), **res}


def _run_isolated(name: str, scale: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.global_threshold", "--child", name, "--scale", scale]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(
    scale: str = "small", out_dir: str | os.PathLike | None = RESULTS, isolate: bool = True
) -> list[dict]:
    sizes = table_sizes(scale)
    model_mib = sum(sizes) * DIM * 4 / 2**20
    measure = (lambda n: _run_isolated(n, scale)) if isolate else (lambda n: run_stage(n, scale))  # noqa: E731
    rows = []
    for norm, block in COMBOS:
        b = f"{block[0]}x{block[1]}"
        o, r = measure(f"lit_dlrm {norm} {b}"), measure(f"reference {norm} {b}")
        if o["counts"] != r["counts"]:
            raise AssertionError(
                f"{norm} {block}: per-table counts differ between lit_dlrm and the reference"
            )
        blocks = sum(o["counts"]["1.0"])
        rows.append(
            seconds_row(
                f"global cuts, 20 levels, {norm} {block}",
                o["cuts_s"],
                r["cuts_s"],
                o["cuts_mib"],
                r["cuts_mib"],
                f"{blocks:,} blocks; same per-table counts on both sides; per-table series "
                f"(cuts_for_levels) {o['per_table_s']:.2f} s",
            )
        )
        rows.append(
            seconds_row(
                f"apply one global level ({APPLY_LEVEL}), {norm} {block}",
                o["apply_s"],
                None,
                o["apply_mib"],
                None,
                "apply_cuts into reused pruned buffers (one more copy of the tables, "
                "allocated before, as Sparsify keeps them)"
                + ("" if o["peak_reset"] else "; peak not reset"),
            )
        )
    text = (
        f"Global threshold, scale={scale}: 26 tables x {DIM}, {model_mib:.0f} MiB fp32; torch "
        f"{torch.__version__}, numpy {np.__version__}. ratio = reference / lit_dlrm. *_peak_mib = "
        f"extra peak RSS over the loaded tables for that step, each side in a fresh process. "
        f"Reference: concatenated scores + numpy.partition (all K at once, in place) + per-table "
        f"counting.\n\n" + markdown_table(rows, list(rows[0]))
    )
    if out_dir is not None:
        write_results(out_dir, f"global_threshold_{scale}", rows, text)
    print(text)
    return rows


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
