"""The sparsity sweep: one ``trainer.test`` per grid point still to do, resumable.

`run_sweep` binds the trainer's `SweepCallback`s to one `SweepContext` and moves it from point to
point; the callbacks do the work. A point is done when every callback's table holds all its rows
for it: a sweep run again tests only the missing points, and replaces rows rather than duplicating
them. A point whose test equals one already done (`GridPoint.test_key_for`) is not tested: that
point's rows are copied under its columns, ``same_mask_as`` naming the source. At the end the
tables are sorted in grid order (on rank 0). The progress bar shows the point under test and,
once tested, its ``test/auc``. The tests share one :class:`~lit_dlrm.module.BottomCache`: the
bottom MLP runs once per test batch, not once per point.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from lit_dlrm.module import BottomCache, DLRMModule
from lit_dlrm.sharded.shards import held_tables
from lit_dlrm.sparsity.chunks import release_freed_memory
from lit_dlrm.sweep.context import SweepCallback, SweepContext
from lit_dlrm.sweep.grid import GridPoint, squares_preserve_order
from lit_dlrm.sweep.results import read_table, row_points, upserted, write_table


def done_points(out_dir: Path, callbacks: list[SweepCallback]) -> set[GridPoint]:
    """Points with all their rows in the table of each of ``callbacks``."""
    done = None
    for cb in callbacks:
        table = read_table(out_dir, cb.table)
        if cb.kind:
            column, kinds = cb.kind
            sets = [set(row_points(table[table[column] == kind])) for kind in kinds]
            points = set.intersection(*sets)
        else:
            points = set(row_points(table))
        done = points if done is None else done & points
    return done or set()


def copied_rows(
    table: pd.DataFrame, pairs: list[tuple[GridPoint, GridPoint]]
) -> list[pd.DataFrame]:
    """For each ``(source, target)``, ``table``'s rows of the source under the target's point
    columns, ``same_mask_as`` naming the source."""
    points = row_points(table)
    copies = []
    for source, target in pairs:
        rows = table[[p == source for p in points]].copy()
        for column, value in target.row.items():
            rows[column] = value
        rows["same_mask_as"] = source.key
        copies.append(rows)
    return copies


def finish_table(
    out_dir: Path,
    cb: SweepCallback,
    pairs: list[tuple[GridPoint, GridPoint]],
    grid: list[GridPoint],
) -> None:
    """Rewrite ``cb``'s table once: with the rows copied for ``pairs`` (:func:`copied_rows`), in
    grid order (rows of points outside this grid go last)."""
    table = read_table(out_dir, cb.table)
    if pairs:
        table = upserted(table, pd.concat(copied_rows(table, pairs)), cb.key())
    order = {p: i for i, p in enumerate(grid)}
    rank = [order.get(p, len(order)) for p in row_points(table)]
    kind = [cb.kind[0]] if cb.kind else []
    table = table.assign(_rank=rank).sort_values(["_rank", *kind], kind="stable")
    write_table(out_dir, cb.table, table.drop(columns="_rank"))


def run_sweep(
    trainer: L.Trainer,
    module: DLRMModule,
    datamodule: L.LightningDataModule,
    grid: list[GridPoint],
    out_dir: str | Path,
    ckpt_path: str | Path | None = None,
) -> None:
    """Test ``module`` on ``datamodule`` at each point of ``grid`` not yet in ``out_dir``'s
    tables, through ``trainer``'s sweep callbacks (each prunes, measures or times a point).
    ``ckpt_path``: a sharded checkpoint directory holding the weights, for a module built without
    them (``trainer``'s strategy shards the network and reads each rank's shards)."""
    out_dir = Path(out_dir)
    if ckpt_path is not None:  # loaded by a test of no batches: the plan below needs the weights
        limit, trainer.limit_test_batches = trainer.limit_test_batches, 0
        try:
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        finally:
            trainer.limit_test_batches = limit
    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, SweepCallback)]
    context = SweepContext(out_dir=out_dir)
    for cb in callbacks:
        cb.bind(context)
    for stale in out_dir.glob(".*.tmp"):  # tables half-written by a killed run
        stale.unlink()
    held = held_tables(module.model)
    squares_keep_order = squares_preserve_order(s.weight for s in held.shards)
    if held.sharded:  # true only if true on every rank
        flag = torch.tensor([int(squares_keep_order)])
        held.reduce(flag)
        squares_keep_order = int(flag) == dist.get_world_size()
    # Decided once, before any test, so that every process of a DDP run takes the same steps.
    done = done_points(out_dir, callbacks)
    first_of_test: dict[str, GridPoint] = {}
    to_test, to_copy = [], []
    for point in grid:
        representative = first_of_test.setdefault(point.test_key_for(squares_keep_order), point)
        if point in done:
            continue
        if representative is point:
            to_test.append(point)
        else:
            to_copy.append((representative, point))
    if any(p.finetune_steps for p in to_test):  # the same unsharded batches on every process
        context.finetune_batches = datamodule.dataloader("train", rank=0, world_size=1)
    progress = tqdm(to_test, desc="sweep", unit="point", disable=not trainer.is_global_zero)
    module.bottom_cache = BottomCache()  # the tests' dense rows and bottom MLP: computed once
    try:
        for i, point in enumerate(progress):
            context.point, context.plan = point, to_test[i + 1 :]
            progress.set_postfix_str(point.key)  # the point under test, then its AUC
            results = trainer.test(module, datamodule=datamodule, verbose=False)
            release_freed_memory()
            if results and "test/auc" in results[0]:
                progress.set_postfix_str(f"{point.key} auc={results[0]['test/auc']:.4f}")
    finally:
        module.bottom_cache = None
    if trainer.is_global_zero:
        for cb in callbacks:
            finish_table(out_dir, cb, to_copy, grid)
