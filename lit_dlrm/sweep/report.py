"""The sweep's report: one joined table, plots, TensorBoard runs and HParams sessions, from the
three CSVs.

Written from the tables alone, as a whole, every time (each file atomically; each TensorBoard
directory is rebuilt beside the old one and swapped in), so a resumed sweep's report equals an
uninterrupted one's and never holds duplicated events.

- ``results.csv``: one row per grid point: quality, sizes, forward times (dense, COO, compact
  tables) and the embedding tables' bytes in memory (``table_bytes_*``);
- ``memory.png``: the tables' bytes in memory, dense, compact and as ``torch.sparse_coo``;
- ``disk_size.png``, ``quality.png``, ``forward_time.png``: against the sparsity level, one line
  per series of the reference's points (norm x block shape);
- ``followups.png``: one panel per further dimension the sweep varied (global threshold, weight
  bits, activation sparsity, fine-tuning), each line against its reference series;
- ``tensorboard/<series>/``: one run per series (`GridPoint.series`: ``L1_1x4``,
  ``L2_1x4_global``, ``L2_1x4_int8``, ...), step = level in percent, so the runs overlay in one
  chart per tag (``roc_auc``, ``log_loss``, ``zip_bytes``, ...);
- ``hparams/<point>/``: one HParams session per grid point (`GridPoint.key`), its hyperparameters
  the point's columns (`COLUMNS`), its metrics quality, byte counts and forward times in ms
  (``forward_ms_*``), for TensorBoard's HParams table and parallel-coordinates view.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from lit_dlrm.hparams import write_sessions  # noqa: E402
from lit_dlrm.paths import atomic_write  # noqa: E402
from lit_dlrm.sweep.grid import COLUMNS  # noqa: E402
from lit_dlrm.sweep.results import (  # noqa: E402
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    read_table,
    row_points,
)

RESULTS_CSV = "results.csv"
# (column of dlrm_forward_time_info.csv, dlrm_type) -> column of results.csv. table_bytes_coo:
# the reference's COO path keeps dense tables; table_bytes_as_coo: what sparse COO tables take.
WIDE_COLUMNS = {
    ("time_taken", "without_torch_sparse"): "forward_s_dense",
    ("time_taken", "with_torch_sparse"): "forward_s_coo",
    ("time_taken", "compact"): "forward_s_compact",
    ("table_bytes", "without_torch_sparse"): "table_bytes_dense",
    ("table_bytes", "with_torch_sparse"): "table_bytes_coo",
    ("table_bytes", "compact"): "table_bytes_compact",
    ("coo_table_bytes", "with_torch_sparse"): "table_bytes_as_coo",
}
FOLLOWUPS = {  # further dimension -> panel title
    "threshold": "global threshold vs per table",
    "weight_bits": "row-wise int8 / int4 tables",
    "activation_sparsity": "activation sparsity",
    "finetune_steps": "fine-tuned, masks fixed",
}


def varied(table: pd.DataFrame) -> list[list[str]]:
    """Per row, the further dimensions its point sets away from the reference."""
    return [p.varied for p in row_points(table)]


def series(table: pd.DataFrame) -> pd.Series:
    """Per row, its point's series name."""
    return pd.Series([p.series for p in row_points(table)], index=table.index, dtype=str)


def joined_results(out_dir: Path) -> pd.DataFrame:
    """Metrics, sizes and both forward times side by side, one row per grid point."""
    table = read_table(out_dir, METRICS_CSV).drop(columns=["same_mask_as"], errors="ignore")
    metadata = read_table(out_dir, METADATA_CSV)
    if len(metadata):
        table = table.merge(
            metadata.drop(columns=["step_time_sec", "same_mask_as"], errors="ignore"),
            on=list(COLUMNS),
            how="left",
        )
    times = read_table(out_dir, FORWARD_TIME_CSV)
    if len(times):
        values = [c for c in ("time_taken", "table_bytes", "coo_table_bytes") if c in times]
        numeric = times.assign(
            **{c: pd.to_numeric(times[c], errors="coerce") for c in values}
        )  # "" where a path lacks one
        wide = numeric.pivot_table(index=list(COLUMNS), columns="dlrm_type", values=values)
        wide = wide[[c for c in wide.columns if c in WIDE_COLUMNS]]
        wide.columns = [WIDE_COLUMNS[c] for c in wide.columns]
        wide = wide.reset_index()
        table = table.merge(wide, on=list(COLUMNS), how="left")
    return with_quality_before_finetuning(table)


def with_quality_before_finetuning(table: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuned rows get ``roc_auc_before_finetune`` and ``log_loss_before_finetune``: the same
    point's figures without fine-tuning (empty where the sweep did not test that point)."""
    if not (table["finetune_steps"].astype(int) > 0).any():
        return table
    key = [c for c in COLUMNS if c != "finetune_steps"]
    before = table[table["finetune_steps"].astype(int) == 0][[*key, "roc_auc", "log_loss"]]
    before = before.rename(
        columns={"roc_auc": "roc_auc_before_finetune", "log_loss": "log_loss_before_finetune"}
    )
    merged = table.merge(before, on=key, how="left")
    tuned = merged["finetune_steps"].astype(int) > 0
    merged.loc[~tuned, ["roc_auc_before_finetune", "log_loss_before_finetune"]] = float("nan")
    return merged


def size_columns(table: pd.DataFrame) -> list[str]:
    """Byte counts of every checkpoint format measured (``zip_bytes`` first)."""
    return sorted(
        (c for c in table.columns if c.endswith("_bytes")), key=lambda c: c != "zip_bytes"
    )


def plot(table: pd.DataFrame, panels: list[tuple[str, str]], path: Path, title: str) -> None:
    """One panel per (column, y label), one line per series, level (%) on x."""
    plot_panels([(table, column, label) for column, label in panels], path, title)


def plot_panels(panels: list[tuple[pd.DataFrame, str, str]], path: Path, title: str) -> None:
    """One panel per (rows, column, y label or panel title), one line per series in its rows."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (table, column, label) in zip(axes[0], panels):
        for name, rows in table.groupby(series(table), sort=True):
            rows = rows.sort_values("sparsity_level")
            values = rows[column] / 2**20 if column.endswith("_bytes") else rows[column]
            style = "--" if name.startswith("L2") else "-"  # identical masks draw L2 over L1
            ax.plot(rows["sparsity_level"] * 100, values, style, marker=".", label=name)
        ax.set_xlabel("sparsity level (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def rebuild(log_dir: Path, build) -> None:
    """Call ``build(fresh)`` on an empty ``<log_dir>.tmp``, then swap it in for ``log_dir``: a
    reader sees the old directory or the new one, never events of both."""
    fresh = log_dir.with_name(log_dir.name + ".tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    build(fresh)
    old = log_dir.with_name(log_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if log_dir.exists():
        log_dir.rename(old)
    fresh.rename(log_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_tensorboard(table: pd.DataFrame, log_dir: Path, tags: list[str]) -> None:
    """One run per series; step = sparsity level in percent."""

    def build(fresh: Path) -> None:
        for run, rows in table.groupby(series(table), sort=True):
            with SummaryWriter(str(fresh / run)) as writer:
                for row in rows.itertuples(index=False):
                    step = round(row.sparsity_level * 100)
                    for tag in tags:
                        writer.add_scalar(tag, getattr(row, tag), global_step=step)

    rebuild(log_dir, build)


def write_hparams(table: pd.DataFrame, log_dir: Path, metrics: list[str]) -> None:
    """One HParams session per row (`lit_dlrm.hparams.write_sessions`), named by its point's key:
    the point's columns, then ``metrics`` (``forward_s_*`` as ``forward_ms_*``, in ms)."""
    ms = {
        name: name.replace("forward_s_", "forward_ms_")
        for name in metrics
        if name.startswith("forward_s_")
    }
    sessions = {}
    for point, row in zip(row_points(table), table.to_dict("records")):
        values = {
            ms.get(name, name): float(row[name]) * (1000 if name in ms else 1) for name in metrics
        }
        sessions[point.key] = (point.row, values)
    domains = {  # the string columns' values, listed in the HParams filters
        column: sorted({params[column] for params, _ in sessions.values()})
        for column in ("norm", "sparse_block_shape", "threshold")
    }
    rebuild(log_dir, lambda fresh: write_sessions(fresh, sessions, domains))


def write_report(out_dir: str | Path) -> pd.DataFrame:
    """Write ``results.csv``, the plots, the TensorBoard runs and the HParams sessions of the sweep
    in ``out_dir``."""
    out_dir = Path(out_dir)
    table = joined_results(out_dir)
    atomic_write(out_dir / RESULTS_CSV, lambda tmp: table.to_csv(tmp, index=False))
    if table.empty:
        return table
    table = table[table["norm"] != "dense"]  # a lone dense row has no level axis to plot
    write_followups(table, out_dir / "followups.png")
    everything, table = table, table[[not dims for dims in varied(table)]]
    sizes = size_columns(table)
    if sizes:
        labels = {
            "zip_bytes": "torch.save + deflate (MiB)",
            "zstd_sparse_bytes": "zstd_sparse (MiB)",
        }
        plot(
            table,
            [(c, labels.get(c, c)) for c in sizes],
            out_dir / "disk_size.png",
            "checkpoint size on disk",
        )
    plot(
        table,
        [("roc_auc", "test AUC"), ("log_loss", "test log loss")],
        out_dir / "quality.png",
        "model quality",
    )
    times = [c for c in ("forward_s_dense", "forward_s_coo", "forward_s_compact") if c in table]
    if times:
        labels = {
            "forward_s_dense": "dense forward (s, median)",
            "forward_s_coo": "reference COO forward (s, median)",
            "forward_s_compact": "compact tables forward (s, median)",
        }
        plot(
            table,
            [(c, labels[c]) for c in times],
            out_dir / "forward_time.png",
            "forward time on one test batch",
        )
    memory = [
        c for c in ("table_bytes_dense", "table_bytes_compact", "table_bytes_as_coo") if c in table
    ]
    if memory:
        labels = {
            "table_bytes_dense": "dense tables (MiB)",
            "table_bytes_compact": "compact tables (MiB)",
            "table_bytes_as_coo": "as torch.sparse_coo (MiB)",
        }
        mib = table.assign(**{c: table[c] / 2**20 for c in memory})
        plot(
            mib,
            [(c, labels[c]) for c in memory],
            out_dir / "memory.png",
            "embedding tables in memory",
        )
    tags = ["roc_auc", "log_loss", "accuracy", "ne", *sizes, *times, *memory]
    write_tensorboard(everything, out_dir / "tensorboard", [t for t in tags if t in everything])
    quality = [c for c in ("roc_auc", "log_loss", "ne", "accuracy") if c in everything]
    write_hparams(everything, out_dir / "hparams", [*quality, *sizes, *memory, *times])
    return everything


def write_followups(table: pd.DataFrame, path: Path) -> None:
    """One AUC panel per further dimension the sweep varied: its series next to the reference
    series of the same norm and block shape (nothing when the sweep varied none)."""
    dims = varied(table)
    reference = table[[not d for d in dims]]
    panels = []
    for column, title in FOLLOWUPS.items():
        rows = table[[d == [column] for d in dims]]
        if rows.empty:
            continue
        shapes = rows[["norm", "sparse_block_shape"]].drop_duplicates()
        base = reference.merge(shapes, on=["norm", "sparse_block_shape"])
        panels.append((pd.concat([base, rows]), "roc_auc", f"test AUC: {title}"))
    if panels:
        plot_panels(
            panels, path, "past the reference: each further dimension against its reference series"
        )
