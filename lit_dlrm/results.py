"""The sweep's result tables: names, columns and rerun-safe, atomic CSV writes.

One source of truth for the reference benchmark's CSV layouts. Each table starts with the
reference's columns in the reference's order; lit_dlrm's extra columns follow them. A row is
identified by its grid point: the reference's ``norm, sparse_block_shape, sparsity_level`` and
lit_dlrm's four further dimensions (``threshold, weight_bits, activation_sparsity,
finetune_steps``: :class:`lit_dlrm.sparsity.grid.GridPoint`), plus ``dlrm_type`` for timings.
Writing a point twice replaces its row instead of duplicating it, and every write goes to a
temporary file renamed over the old one: a killed sweep never leaves a truncated table behind.
Tables written before those four columns existed read back with their reference values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lit_dlrm.paths import atomic_write

POINT_COLUMNS = ["norm", "sparse_block_shape", "sparsity_level"]
# lit_dlrm's further grid dimensions and the value meaning "as the reference does".
STUDY_COLUMNS = {
    "threshold": "per_table",
    "weight_bits": 32,
    "activation_sparsity": 0.0,
    "finetune_steps": 0,
}
KEY = [*POINT_COLUMNS, *STUDY_COLUMNS]

METADATA_CSV = "sparse_model_metadata.csv"
METRICS_CSV = "sparse_model_metrics.csv"
FORWARD_TIME_CSV = "dlrm_forward_time_info.csv"

REFERENCE_COLUMNS = {
    METADATA_CSV: [*POINT_COLUMNS, "step_time_sec", "zip_file_size", "path"],
    METRICS_CSV: [*POINT_COLUMNS, "precision", "recall", "f1", "roc_auc", "accuracy", "log_loss"],
    FORWARD_TIME_CSV: [*POINT_COLUMNS, "time_taken", "dlrm_type"],
}
KEY_COLUMNS = {
    METADATA_CSV: KEY,
    METRICS_CSV: KEY,
    FORWARD_TIME_CSV: [*KEY, "dlrm_type"],
}


def point_row(point) -> dict:
    """The key columns of a :class:`~lit_dlrm.sparsity.grid.GridPoint`'s rows."""
    return {
        "norm": point.norm,
        "sparse_block_shape": point.block_shape_str,
        "sparsity_level": point.level,
        "threshold": point.threshold,
        "weight_bits": point.weight_bits,
        "activation_sparsity": point.activation,
        "finetune_steps": point.finetune_steps,
    }


def row_key(row: dict) -> tuple:
    """A row's grid point as a comparable tuple (the same for a point's :func:`point_row`)."""
    return (
        row["norm"],
        row["sparse_block_shape"],
        float(row["sparsity_level"]),
        row["threshold"],
        int(row["weight_bits"]),
        float(row["activation_sparsity"]),
        int(row["finetune_steps"]),
    )


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """The table ``name`` in ``out_dir`` (empty, with the reference columns, if not written yet).
    ``sparse_block_shape`` stays a string like ``"(1, 4)"``, as the reference writes it."""
    path = Path(out_dir) / name
    if not path.exists():
        return pd.DataFrame(columns=[*REFERENCE_COLUMNS[name], *STUDY_COLUMNS])
    table = pd.read_csv(
        path,
        dtype={"sparse_block_shape": str, "norm": str, "path": str, "threshold": str},
        keep_default_na=False,
    )
    for column, value in STUDY_COLUMNS.items():
        if column not in table:
            table[column] = value
    return table


def write_table(out_dir: str | Path, name: str, table: pd.DataFrame) -> None:
    """Write ``table`` as ``name``: reference columns first, extra columns after, atomically."""
    reference = REFERENCE_COLUMNS[name]
    missing = [c for c in reference if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: rows lack the reference columns {missing}")
    ordered = table[reference + [c for c in table.columns if c not in reference]]
    atomic_write(Path(out_dir) / name, lambda tmp: ordered.to_csv(tmp, index=False))


def upsert_rows(out_dir: str | Path, name: str, rows: Iterable[dict]) -> None:
    """Add ``rows`` to the table ``name``, replacing any row with the same key."""
    new = pd.DataFrame(list(rows))
    old = read_table(out_dir, name)
    keys = KEY_COLUMNS[name]
    if len(old):
        replaced = old.set_index(keys).index.isin(new.set_index(keys).index)
        old = old[~replaced]
    combined = new if old.empty else pd.concat([old, new], ignore_index=True)
    write_table(out_dir, name, combined)
