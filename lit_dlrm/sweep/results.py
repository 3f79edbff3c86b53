"""The sweep's result tables: names, the reference's columns, and rerun-safe, atomic CSV writes.

Each table starts with the reference's columns in the reference's order; the further point
columns and lit_dlrm's extra columns follow. A row is identified by its point's columns
(:data:`lit_dlrm.sweep.grid.COLUMNS`) and, where a point has several rows, the column telling
them apart (``dlrm_type``): writing a row twice replaces it. Every write goes to a temporary file
renamed over the old one. Tables written before the further columns existed read back with the
reference's values in them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from lit_dlrm.paths import atomic_write
from lit_dlrm.sweep.grid import COLUMNS, DEFAULTS, GridPoint

METADATA_CSV = "sparse_model_metadata.csv"
METRICS_CSV = "sparse_model_metrics.csv"
FORWARD_TIME_CSV = "dlrm_forward_time_info.csv"

REFERENCE_POINT = [c for c in COLUMNS if c not in DEFAULTS]  # norm, sparse_block_shape, level
REFERENCE_COLUMNS = {
    METADATA_CSV: [*REFERENCE_POINT, "step_time_sec", "zip_file_size", "path"],
    METRICS_CSV: [*REFERENCE_POINT, "precision", "recall", "f1", "roc_auc", "accuracy", "log_loss"],
    FORWARD_TIME_CSV: [*REFERENCE_POINT, "time_taken", "dlrm_type"],
}


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """The table ``name`` in ``out_dir`` (empty, with the reference and point columns, if not
    written yet). ``sparse_block_shape`` stays a string like ``"(1, 4)"``, as the reference's."""
    path = Path(out_dir) / name
    if not path.exists():
        return pd.DataFrame(columns=[*REFERENCE_COLUMNS[name], *DEFAULTS])
    table = pd.read_csv(
        path,
        dtype={"sparse_block_shape": str, "norm": str, "path": str, "threshold": str},
        keep_default_na=False,
    )
    for column, value in DEFAULTS.items():
        if column not in table:
            table[column] = value
    return table


def rows_tested(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` that a test wrote: not those a sweep copies at its end for points
    of identical masks (``same_mask_as`` names their source; empty on the others)."""
    if "same_mask_as" not in table:
        return table
    return table[table["same_mask_as"].astype(str) == ""]


def row_points(table: pd.DataFrame) -> list[GridPoint]:
    """The grid point of each row of ``table``."""
    return [GridPoint.from_row(row) for row in table.to_dict("records")]


def write_table(out_dir: str | Path, name: str, table: pd.DataFrame) -> None:
    """Write ``table`` as ``name``: reference columns first, extra columns after, atomically."""
    reference = REFERENCE_COLUMNS[name]
    missing = [c for c in reference if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: rows lack the reference columns {missing}")
    ordered = table[reference + [c for c in table.columns if c not in reference]]
    atomic_write(Path(out_dir) / name, lambda tmp: ordered.to_csv(tmp, index=False))


def upsert_rows(
    out_dir: str | Path, name: str, rows: Iterable[dict], key: Sequence[str] = COLUMNS
) -> None:
    """Add ``rows`` to the table ``name``, replacing any row with the same ``key`` columns."""
    write_table(out_dir, name, upserted(read_table(out_dir, name), pd.DataFrame(list(rows)), key))


def upserted(old: pd.DataFrame, new: pd.DataFrame, key: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """``old`` without its rows whose ``key`` columns match a row of ``new``, then ``new``."""
    key = list(key)
    if len(old) and len(new):
        old = old[~old.set_index(key).index.isin(new.set_index(key).index)]
    return new if old.empty else pd.concat([old, new], ignore_index=True)
