"""The sparsity sweep: one ``trainer.test`` per grid point, resumable, each mask computed once.

The work of a point is done by the callbacks attached to the trainer (:mod:`callbacks`): they
prune, measure and write their rows. This driver only decides which points still need a test:

- a point is *done* when every table that an attached callback writes has its row, so a sweep
  killed at any moment and run again computes just the missing points (rows are replaced, never
  duplicated: :func:`lit_dlrm.results.upsert_rows`);
- a point whose test is provably identical to one already done (the same mask -- level 0 or 1
  for every norm, block shape and threshold, and L2 (1, 1) = L1 (1, 1) when the tables allow
  it -- and the same bits, activation sparsity and fine-tuning: ``GridPoint.test_key_for``)
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
    KEY,
    METADATA_CSV,
    METRICS_CSV,
    point_row,
    read_table,
    row_key,
    upsert_rows,
    write_table,
)
from lit_dlrm.sparsity.grid import GridPoint, squares_preserve_order


def point_id(point: GridPoint) -> tuple:
    return row_key(point_row(point))


def row_ids(table: pd.DataFrame) -> list[tuple]:
    """The grid point of each row, comparable with :func:`point_id`."""
    return [row_key(row) for row in table[KEY].to_dict("records")]


def written_tables(trainer: L.Trainer) -> list[str]:
    """The tables that this trainer's sweep callbacks write."""
    kinds = {
        Sparsify: METRICS_CSV,
        CheckpointCompression: METADATA_CSV,
        SparseCooTiming: FORWARD_TIME_CSV,
    }
    return [
        name
        for kind, name in kinds.items()
        if any(isinstance(cb, kind) for cb in trainer.callbacks)
    ]


def done_points(out_dir: Path, tables: list[str]) -> set[tuple]:
    """Points with a row in each of ``tables`` (for the timings: all three forward paths)."""
    done = None
    for name in tables:
        table = read_table(out_dir, name)
        if name == FORWARD_TIME_CSV:
            ids = [
                set(row_ids(table[table["dlrm_type"] == kind]))
                for kind in ("with_torch_sparse", "without_torch_sparse", "compact")
            ]
            ids = set.intersection(*ids)
        else:
            ids = set(row_ids(table))
        done = ids if done is None else done & ids
    return done or set()


def copy_rows(out_dir: Path, tables: list[str], source: GridPoint, target: GridPoint) -> None:
    """Write ``source``'s rows again under ``target``'s point columns (identical masks)."""
    for name in tables:
        table = read_table(out_dir, name)
        rows = table[[i == point_id(source) for i in row_ids(table)]].copy()
        for column, value in point_row(target).items():
            rows[column] = value
        rows["same_mask_as"] = source.key
        upsert_rows(out_dir, name, rows.to_dict("records"))


def sort_tables(out_dir: Path, tables: list[str], grid: list[GridPoint]) -> None:
    """Rewrite the tables in grid order (rows of points outside this grid go last)."""
    order = {point_id(p): i for i, p in enumerate(grid)}
    for name in tables:
        table = read_table(out_dir, name)
        rank = [order.get(i, len(order)) for i in row_ids(table)]
        sort_cols = ["dlrm_type"] if name == FORWARD_TIME_CSV else []
        table = (
            table.assign(_rank=rank)
            .sort_values(["_rank", *sort_cols], kind="stable")
            .drop(columns="_rank")
        )
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
    squares_keep_order = squares_preserve_order(
        table.weight.detach() for table in module.model.emb_l
    )
    # Decided once, before any test, so that every process of a DDP run takes the same steps.
    done = done_points(out_dir, tables)
    first_of_test: dict[str, GridPoint] = {}
    to_test, to_copy = [], []
    for point in grid:
        representative = first_of_test.setdefault(point.test_key_for(squares_keep_order), point)
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
