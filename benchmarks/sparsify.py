"""Time sparsity grid points: lit_dlrm's pruning as the sweep runs it versus DataNormSparsifier.

    python -m benchmarks.sparsify --scale kaggle   # 26 tables, 33.8M rows
    python -m benchmarks.sparsify --scale small    # tables capped at 200k rows

Tables get the Kaggle row counts (capped at `small`/`tiny` scale), width 16 and DLRM's init
U(-sqrt(1/n), sqrt(1/n)), generated in chunks. Stages, each side run ``repeats`` times in ABBA
order (:mod:`benchmarks.harness`):

* `floor`: clone every table (one read + one write of the tables into fresh memory);
* `one point <norm> <block>`: lit_dlrm = `prune` at level 0.5 into freshly allocated buffers, as
  the sweep's `Sparsify` does at its first point (the dense tables stay aside to restore them:
  the buffers are one more copy of the tables, and count in the peak); reference =
  DataNormSparsifier `step()` + `squash_mask()` on a copy of the tables (made before the timer),
  in place as the reference prunes. Same work, table by table (:func:`mask_work`): equal zeros,
  equal pruned blocks, equal cut score (the highest score pruned) and equal masks on every block
  whose score differs from the cut score. Blocks tied at the cut may differ: lit_dlrm prunes the
  lower index, the reference's unstable ``torch.sort`` whichever it meets first (docs/design.md,
  "When the cut splits a tie group"). The reference runs L1 (1, 1), L1 (1, 4) and L2 (1, 4): it
  skips L2 (1, 1) (same masks as L1);
* `grid`: lit_dlrm's 80 points as the sweep runs them (per (norm, block) series one
  `cuts_for_levels` for all 20 levels, then per level one `apply_cuts` into buffers reused from
  point to point); the reference's grid is the sum of its measured points over the 60 points it
  runs (20 levels x its 3 series).

`run(scale, repeats)` returns rows of the harness's schema.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

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
    single,
    timed,
)
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.sparsity.chunks import row_chunks
from lit_dlrm.sparsity.prune import apply_cuts, block_scores, cuts_for_levels, prune
from lit_dlrm.sweep.grid import DEFAULT_LEVELS, default_grid

DIM = 16
CAPS = {"kaggle": None, "small": 200_000, "tiny": 2_000}
LEVEL = 0.5
COMBOS = [("L1", (1, 1)), ("L2", (1, 1)), ("L1", (1, 4)), ("L2", (1, 4))]
# the reference's own grid: PyTorch's benchmark skips L2 (1, 1) (its masks are L1 (1, 1)'s)
REFERENCE_COMBOS = [("L1", (1, 1)), ("L1", (1, 4)), ("L2", (1, 4))]
REFERENCE_POINTS = len(REFERENCE_COMBOS) * len(DEFAULT_LEVELS)


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


@functools.lru_cache(maxsize=1)
def shared_tables(scale: str) -> tuple[torch.Tensor, ...]:
    """The tables of ``scale`` (:func:`build_tables`), built once and shared by the stages that
    read them (sparsify, compress, global, quantize): read-only, never pruned in place."""
    return tuple(build_tables(table_sizes(scale)))


def mask_work(dense: list[torch.Tensor], norm: str, block) -> Callable[[list], list[tuple]]:
    """A fingerprint of pruned tables, ties at the cut left out: per table (zeros, pruned blocks,
    cut score = the highest score pruned or None, SHA-1 of the pruned-block mask over the blocks
    whose score differs from the cut score). Two prunings of ``dense`` by the same (norm, block)
    rule have equal fingerprints exactly when they differ at most in which blocks tied at the cut
    they prune. The scores of ``dense`` are computed once, here (outside any timer)."""
    scores = [block_scores(t, norm, block) for t in dense]  # per table (blocks_r, blocks_c)

    def work(pruned: list[torch.Tensor]) -> list[tuple]:
        out = []
        for s, p in zip(scores, pruned):
            gone = block_scores((p != 0).float(), "L1", block) == 0  # every element zero
            cut = float(s[gone].max()) if bool(gone.any()) else None
            untied = gone[s != cut] if cut is not None else gone.reshape(-1)
            digest = hashlib.sha1(untied.numpy().tobytes()).hexdigest()
            out.append((int((p == 0).sum()), int(gone.sum()), cut, digest))
        return out

    return work


def ours_point(tables, norm, block, work) -> Sample:
    """One point as the sweep's first: fresh buffers, the dense tables kept."""

    def point():
        return prune(tables, norm, block, LEVEL, [torch.empty_like(t) for t in tables])

    return timed(point, work)


def reference_point(tables, norm, block, work) -> Sample:
    """DataNormSparsifier step + squash_mask on a copy (made before the timer), in place."""
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier

    params = [torch.nn.Parameter(t.clone(), requires_grad=False) for t in tables]
    sp = DataNormSparsifier(sparsity_level=LEVEL, sparse_block_shape=block, norm=norm)
    for i, p in enumerate(params):
        sp.add_data(f"emb_l_{i}", p)

    def point():
        sp.step()
        sp.squash_mask()
        return [p.data for p in params]

    return timed(point, work)


def grid(tables) -> Sample:
    """All 80 points as the sweep runs them; work = every point's zero count."""

    def all_points():
        buffers = [torch.empty_like(t) for t in tables]
        zeros = []
        for norm, block in COMBOS:
            series = cuts_for_levels(tables, norm, block, DEFAULT_LEVELS)
            for level in DEFAULT_LEVELS:
                pruned = apply_cuts(tables, series.for_level(level), norm, block, out=buffers)
                zeros.append(sum(int((t == 0).sum()) for t in pruned))
        if len(zeros) != len(default_grid()):
            raise AssertionError(
                f"grid: ran {len(zeros)} points, the sweep runs {len(default_grid())}"
            )
        return zeros

    return timed(all_points, lambda zeros: zeros)


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    repeats = repeats or SLOW_REPEATS[scale]
    tables = list(shared_tables(scale))
    floor = alternate({OURS: lambda: timed(lambda: [t.clone() for t in tables])}, repeats)
    rows = [single("floor (clone all tables)", "s", floor[OURS], "one read + one write")]
    ref_seconds = []
    for norm, block in COMBOS:
        stage = f"one point {norm} {block}"
        work = mask_work(tables, norm, block)
        sides = {OURS: lambda n=norm, b=block, w=work: ours_point(tables, n, b, w)}
        if (norm, block) in REFERENCE_COMBOS:
            sides[REF] = lambda n=norm, b=block, w=work: reference_point(tables, n, b, w)
        samples = alternate(sides, repeats)
        what = "per table equal zeros, cut score and masks off the blocks tied at the cut"
        check_same_work(stage, samples, what=what)
        row = compare(
            stage,
            "s",
            samples,
            note=f"level {LEVEL}; lit_dlrm into fresh buffers (peak: +1 copy of the tables), "
            "reference in place on a copy"
            + ("" if REF in sides else "; the reference does not run this series"),
        )
        if REF in sides:
            ref_seconds.append(row[REF])
        rows.append(row)
    runs = alternate({OURS: lambda: grid(tables)}, repeats)
    check_same_work("grid", runs, what="the same zeros at every point")
    row = single(
        "grid: lit_dlrm 80 points, reference 60",
        "s",
        runs[OURS],
        note="lit_dlrm: per series 2 counting passes for all 20 levels + 1 apply per level into "
        "reused buffers; reference: 20 levels x the median of each of its 3 series' points",
    )
    row[REF] = len(DEFAULT_LEVELS) * sum(ref_seconds)
    row["ratio"] = row[REF] / row[OURS]
    rows.append(row)
    return rows


def main(argv=None) -> None:
    main_for("sparsify", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
