"""Writing a benchmark's results: one CSV and one Markdown file, each atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from lit_dlrm.paths import atomic_write


def markdown_table(
    rows: list[dict], columns: list[str], fmt: Callable = lambda v: "" if v is None else str(v)
) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | Path,
    stem: str,
    rows: list[dict],
    markdown: str,
    columns: list[str] | None = None,
) -> Path:
    """Write ``<stem>.csv`` (``columns``: default the first row's keys) and ``<stem>.md``."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / f"{stem}.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    atomic_write(out_dir / f"{stem}.md", lambda tmp: tmp.write_text(markdown))
    return out_dir / f"{stem}.md"


def seconds_row(stage, ours_s, ref_s, ours_mib, ref_mib, note, floor_s=None) -> dict:
    """One row of the harness's common schema (``benchmarks/run.py``'s columns) for a timed stage:
    seconds to the ms, the reference/lit_dlrm ratio, peaks in MiB to 0.1 (None: not measured)."""
    return {
        "stage": stage,
        "unit": "s",
        "lit_dlrm": round(ours_s, 3),
        "reference": None if ref_s is None else round(ref_s, 3),
        "ratio": round(ref_s / ours_s, 1) if ref_s is not None and ours_s > 0 else None,
        "lit_dlrm_peak_mib": None if ours_mib is None else round(ours_mib, 1),
        "reference_peak_mib": None if ref_mib is None else round(ref_mib, 1),
        "floor": None if floor_s is None else round(floor_s, 3),
        "note": note,
    }
