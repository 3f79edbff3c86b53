"""Time and memory of global-threshold cuts: lit_dlrm's counting passes versus concatenate + select.

    python -m benchmarks.global_threshold --scale kaggle   # 26 tables, 33.8M rows (minutes)
    python -m benchmarks.global_threshold --scale small    # tables capped at 200k rows

Tables as in benchmarks/sparsify.py (Kaggle row counts, width 16, DLRM's uniform init). Both
sides run ``repeats`` times in ABBA order (:mod:`benchmarks.harness`), on L1 (1, 1) and L2 (1, 4):

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

Same work: both sides' per-table counts at every level must be equal on every run. Both sides
define the cut alike (a threshold, ties to the tables in order, by index within a table) and
compute the same float32 scores, so ties cannot make the counts differ. Peak memory: each step's
as :func:`benchmarks.harness.measured` takes it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from benchmarks.harness import (
    OURS,
    REF,
    SLOW_REPEATS,
    Sample,
    alternate,
    check_same_work,
    compare,
    main_for,
    measured,
    single,
    spread,
)
from benchmarks.sparsify import CAPS, shared_tables
from lit_dlrm.sparsity.global_threshold import global_cuts
from lit_dlrm.sparsity.prune import apply_cuts, block_scores, cuts_for_levels, num_blocks
from lit_dlrm.sweep.grid import DEFAULT_LEVELS

COMBOS = [("L1", (1, 1)), ("L2", (1, 4))]
APPLY_LEVEL = 0.9


def ours(tables, norm, block) -> dict:
    global_cuts([tables[-1][:64]], norm, block, DEFAULT_LEVELS)  # warm-up: thread pool, first calls
    series, cuts_s, cuts_mib = measured(lambda: global_cuts(tables, norm, block, DEFAULT_LEVELS))
    counts = {str(lv): [c.k for c in cuts] for lv, cuts in series.cuts.items()}
    _, per_table_s, _ = measured(lambda: cuts_for_levels(tables, norm, block, DEFAULT_LEVELS))
    out = [torch.zeros_like(t) for t in tables]  # reused buffers: allocated and paged in before
    cuts = series.for_level(APPLY_LEVEL)
    _, apply_s, apply_mib = measured(lambda: apply_cuts(tables, cuts, norm, block, out=out))
    return {
        "cuts_s": cuts_s,
        "cuts_mib": cuts_mib,
        "per_table_s": per_table_s,
        "apply_s": apply_s,
        "apply_mib": apply_mib,
        "counts": counts,
    }


def reference_counts(tables, norm, block) -> dict[str, list[int]]:
    """Concatenate every score, select the K-th smallest in place, count per table (docstring):
    per level, the blocks each table loses."""
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
    return counts


def reference(tables, norm, block) -> dict:
    counts, sec, mib = measured(lambda: reference_counts(tables, norm, block))
    return {"cuts_s": sec, "cuts_mib": mib, "counts": counts}


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    repeats = repeats or SLOW_REPEATS[scale]
    tables = list(shared_tables(scale))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    for norm, block in COMBOS:
        runs: dict[str, dict] = {}

        def side(name, fn, norm=norm, block=block, runs=runs):
            def one():
                res = fn(tables, norm, block)
                runs.setdefault(name, []).append(res)
                return Sample(res["cuts_s"], res["cuts_mib"], res["counts"])

            return one

        samples = alternate({OURS: side(OURS, ours), REF: side(REF, reference)}, repeats)
        stage = f"global cuts, 20 levels, {norm} {block}"
        check_same_work(stage, samples, what="equal per-table counts at every level")
        blocks = sum(samples[OURS][0].work["1.0"])
        per_table = spread([r["per_table_s"] for r in runs[OURS]])[0]
        rows.append(
            compare(
                stage,
                "s",
                samples,
                note=f"{blocks:,} blocks; reference: concatenated scores + numpy.partition; "
                f"the per-table series (cuts_for_levels) takes {per_table:.3g} s (median)",
            )
        )
        applied = [Sample(r["apply_s"], r["apply_mib"]) for r in runs[OURS]]
        rows.append(
            single(
                f"apply one global level ({APPLY_LEVEL}), {norm} {block}",
                "s",
                applied,
                note="apply_cuts into reused pruned buffers (allocated before, as Sparsify "
                "keeps them)",
            )
        )
    return rows


def main(argv=None) -> None:
    main_for("global_threshold", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
