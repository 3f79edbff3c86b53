"""The sparsity sweep: one ``trainer.test`` per grid point, resumable, each mask computed once.

The work of a point is done by the callbacks attached to the trainer (:mod:`callbacks`): they
prune, measure and write their rows. This driver only decides which points still need a test:

- a point is *done* when every table that an attached callback writes has its row, so a sweep
  killed at any moment and run again computes just the missing points (rows are replaced, never
  duplicated: :func:`lit_dlrm.results.upsert_rows`);
- a point whose mask is provably identical to one already done (level 0 or 1 for every norm and
  block shape, and L2 (1, 1) = L1 (1, 1) when the tables allow it: ``GridPoint.mask_key_for``)
  is not tested again: the done point's rows are copied under its name, with ``same_mask_as``
  saying where they came from.

At the end the tables are sorted in grid order, then :mod:`lit_dlrm.report` writes the joined
table, the plots and the TensorBoard runs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
from tqdm import tqdm

from callbacks.compression import CheckpointCompression
from callbacks.sparsification import Sparsify
from callbacks.timing import SparseCooTiming
from lit_dlrm.results import (
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    POINT_COLUMNS,
    read_table,
    upsert_rows,
    write_table,
)
from lit_dlrm.sparsity.grid import GridPoint, squares_preserve_order


def point_id(point: GridPoint) -> tuple:
    return (point.norm, point.block_shape_str, float(point.level))


def row_ids(table: pd.DataFrame) -> list[tuple]:
    """The grid point of each row, comparable with :func:`point_id`."""
    return list(zip(table["norm"], table["sparse_block_shape"], table["sparsity_level"].astype(float)))


def written_tables(trainer: L.Trainer) -> list[str]:
    """The tables that this trainer's sweep callbacks write."""
    kinds = {Sparsify: METRICS_CSV, CheckpointCompression: METADATA_CSV, SparseCooTiming: FORWARD_TIME_CSV}
    return [name for kind, name in kinds.items() if any(isinstance(cb, kind) for cb in trainer.callbacks)]


def done_points(out_dir: Path, tables: list[str]) -> set[tuple]:
    """Points with a row in each of ``tables`` (for the timings: both forward paths)."""
    done = None
    for name in tables:
        table = read_table(out_dir, name)
        if name == FORWARD_TIME_CSV:
            ids = [set(row_ids(table[table["dlrm_type"] == kind])) for kind in ("with_torch_sparse", "without_torch_sparse")]
            ids = ids[0] & ids[1]
        else:
            ids = set(row_ids(table))
        done = ids if done is None else done & ids
    return done or set()


def copy_rows(out_dir: Path, tables: list[str], source: GridPoint, target: GridPoint) -> None:
    """Write ``source``'s rows again under ``target``'s point columns (identical masks)."""
    for name in tables:
        table = read_table(out_dir, name)
        rows = table[[i == point_id(source) for i in row_ids(table)]].copy()
        rows[POINT_COLUMNS] = [target.norm, target.block_shape_str, target.level]
        rows["same_mask_as"] = source.key
        upsert_rows(out_dir, name, rows.to_dict("records"))


def sort_tables(out_dir: Path, tables: list[str], grid: list[GridPoint]) -> None:
    """Rewrite the tables in grid order (rows of points outside this grid go last)."""
    order = {point_id(p): i for i, p in enumerate(grid)}
    for name in tables:
        table = read_table(out_dir, name)
        rank = [order.get(i, len(order)) for i in row_ids(table)]
        sort_cols = ["dlrm_type"] if name == FORWARD_TIME_CSV else []
        table = table.assign(_rank=rank).sort_values(["_rank", *sort_cols], kind="stable").drop(columns="_rank")
        write_table(out_dir, name, table)


def run_sweep(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    grid: list[GridPoint],
    out_dir: str | Path,
) -> None:
    """Test ``module`` once per distinct mask of ``grid``, through ``trainer``'s callbacks."""
    out_dir = Path(out_dir)
    sparsify = next((cb for cb in trainer.callbacks if isinstance(cb, Sparsify)), None)
    if sparsify is None:
        raise ValueError("run_sweep needs a Sparsify callback among the trainer's callbacks")
    tables = written_tables(trainer)
    for stale in out_dir.glob(".*.tmp"):  # tables half-written by a killed run
        stale.unlink()
    squares_keep_order = squares_preserve_order(table.weight.detach() for table in module.model.emb_l)
    # Decided once, before any test, so that every process of a DDP run takes the same steps.
    done = done_points(out_dir, tables)
    first_of_mask: dict[str, GridPoint] = {}
    to_test, to_copy = [], []
    for point in grid:
        representative = first_of_mask.setdefault(point.mask_key_for(squares_keep_order), point)
        if point_id(point) in done:
            continue
        if representative is point:
            to_test.append(point)
        else:
            to_copy.append((representative, point))

    # Sparsify shares the cuts of a (norm, block shape) series across its levels and reuses its
    # pruned buffers from point to point; release them when the sweep is over.
    sparsify.plan, sparsify.keep_buffers = to_test, True
    try:
        for point in tqdm(to_test, desc="sweep", unit="point", disable=not trainer.is_global_zero):
            sparsify.point = point
            trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        sparsify.plan, sparsify.keep_buffers = None, False
        sparsify.release()
    if trainer.is_global_zero:
        for source, target in to_copy:
            copy_rows(out_dir, tables, source, target)
        sort_tables(out_dir, tables, grid)
