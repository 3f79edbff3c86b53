"""The sweep contract: `SweepContext`, what the callbacks of one grid point share, and
`SweepCallback`, the base of a callback that adds that point's rows to one table.

The driver (:func:`lit_dlrm.sweep.driver.run_sweep`) makes one context, hands it to every
`SweepCallback` of the trainer through `bind`, and moves it from point to point. The callbacks
read the point from it and share nothing else: none looks another up. Unbound, a callback keeps
a context of its own and measures alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_dlrm.sweep.grid import COLUMNS, DENSE, GridPoint
from lit_dlrm.sweep.results import upsert_rows


@dataclass
class SweepContext:
    """What the callbacks testing one grid point share.

    Attributes:
        point: the point under test (`DENSE`: the model as it is).
        plan: the points to be tested after it, in order (empty: this is the last).
        out_dir: where the tables go; None writes nothing.
        finetune_batches: training batches for fine-tuning (None: the trainer's datamodule's).
        step_time_sec: seconds the point's pruning took (set by the pruning callback, 0 unpruned).
    """

    point: GridPoint = DENSE
    plan: Sequence[GridPoint] = ()
    out_dir: str | Path | None = None
    finetune_batches: Iterable | None = None
    step_time_sec: float = 0.0


class SweepCallback(Callback):
    """A callback that measures the point under test and adds its rows to one table.

    A subclass declares `table` (the file it writes), `columns` (what its rows hold after the
    point's columns, in order: `write` keeps only those) and, when it writes several rows per
    point, `kind`: the column that tells them apart and every value it takes, all written at each
    point. A point is done for this callback once the table holds all its rows.
    """

    table: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]
    kind: ClassVar[tuple[str, tuple[str, ...]] | None] = None

    def __init__(self, context: SweepContext) -> None:
        self.context = context

    def bind(self, context: SweepContext) -> None:
        """Use `context` (shared with the sweep's other callbacks) instead of this one's own."""
        self.context = context

    @classmethod
    def key(cls) -> list[str]:
        """The columns that identify one of this callback's rows."""
        return [*COLUMNS, cls.kind[0]] if cls.kind else list(COLUMNS)

    def write(self, trainer: L.Trainer, rows: list[dict]) -> None:
        """Add `rows` (keeping the declared columns) under the point's columns, from rank 0."""
        if rows and self.context.out_dir and trainer.is_global_zero:
            point = self.context.point.row
            rows = [{**point, **{c: row[c] for c in self.columns if c in row}} for row in rows]
            upsert_rows(self.context.out_dir, self.table, rows, self.key())
