"""``Sparsify``: prune the embedding tables at one grid point for the length of a ``trainer.test``.

Masks are those of PyTorch's ``DataNormSparsifier`` (see :mod:`lit_dlrm.sparsity.masks`). The
pruned tables are written into separate buffers swapped into the parameters in
``on_test_start``; the dense originals are kept aside (not copied) and swapped back in
``on_test_end`` (or on an exception), so the model leaves the test bit-identical to how it came
in. Memory: one extra copy of the embedding tables (the pruned buffers) for the length of the
test, plus O(chunk) temporaries and ~1 MiB of cuts.

Speed (:mod:`lit_dlrm.sparsity.series`): the cuts of every level of a (norm, block shape) series
come out of the same two counting passes, so when ``plan`` lists the points to come (the sweep
sets it), the first point of a series computes the cuts of all its levels and the following
points only run one apply pass. With ``keep_buffers`` (the sweep sets it, and calls
``release()`` at the end) the pruned buffers are reused from point to point instead of being
allocated (and page-faulted) anew: the extra copy then stays allocated between tests. Cached
cuts are safe: every apply counts the blocks it prunes, and a cut that does not prune exactly
``k`` blocks of the tables it reads (they changed) is recomputed; one that does is exact.

With ``out_dir`` set, the test metrics of the pruned model go to ``sparse_model_metrics.csv``
(the reference's columns, then ``ne``, ``calibration``, ``step_time_sec``).

Usable alone: ``trainer.test(..., callbacks=[Sparsify("L2", (1, 4), 0.9, out_dir="out")])`` or
``--trainer.callbacks+=callbacks.Sparsify --trainer.callbacks.level=0.9``.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_dlrm.results import METRICS_CSV, upsert_rows
from lit_dlrm.sparsity.grid import GridPoint, make_grid
from lit_dlrm.sparsity.series import SeriesCuts, StaleCut, apply_cuts, cuts_for_levels

DENSE = {"norm": "dense", "sparse_block_shape": "(1, 1)", "sparsity_level": 0.0}


class Sparsify(Callback):
    """Prune every table with ``norm`` over ``block_shape`` blocks at ``level`` during testing.

    Args:
        norm: ``"L1"`` (block score = mean |w|) or ``"L2"`` (mean w^2).
        block_shape: (height, width) of the blocks removed together.
        level: fraction of each table's blocks zeroed, in [0, 1].
        signed_zeros: write zeros as the reference does (``w * mask``: -0.0 for negative weights)
            instead of +0.0. Changes only the sign bits, and so how well a checkpoint compresses.
        out_dir: where to add this point's row of ``sparse_model_metrics.csv``; None writes nothing.
    """

    def __init__(
        self,
        norm: str = "L1",
        block_shape: tuple[int, int] = (1, 4),
        level: float = 0.5,
        signed_zeros: bool = False,
        out_dir: str | None = None,
    ) -> None:
        (self.point,) = make_grid([level], [block_shape], [norm])
        self.signed_zeros = signed_zeros
        self.out_dir = out_dir
        self.step_time_sec: float | None = None
        self.plan: list[GridPoint] | None = None  # points to come (sweep): cuts shared per series
        self.keep_buffers = False  # reuse the pruned buffers across tests (until release())
        self._dense = None
        self._series: SeriesCuts | None = None
        self._buffers: list | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [table.weight for table in pl_module.model.emb_l]
        self._dense = [p.data for p in params]
        start = time.perf_counter()
        pruned = self._prune(self._dense)
        self.step_time_sec = time.perf_counter() - start
        for param, table in zip(params, pruned):
            param.data = table

    def _prune(self, dense: list) -> list:
        """Pruned copies of `dense` (the buffers), with the series' cuts (computed or cached)."""
        p = self.point
        shapes = tuple((tuple(t.shape), t.dtype) for t in dense)
        key = (p.norm, tuple(p.block_shape), shapes)
        series = self._series
        if series is None or series.key != key or float(p.level) not in series.cuts:
            levels = {float(p.level)}
            for q in self.plan or []:
                if (q.norm, tuple(q.block_shape)) == (p.norm, tuple(p.block_shape)):
                    levels.add(float(q.level))
            series = cuts_for_levels(dense, p.norm, p.block_shape, sorted(levels))
            series.key = key
            self._series = series
        buffers = self._buffers
        self._buffers = None
        if buffers is None or [(tuple(b.shape), b.dtype) for b in buffers] != [s[:2] for s in shapes]:
            buffers = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in dense]
        try:
            return apply_cuts(dense, series.for_level(p.level), p.norm, p.block_shape, out=buffers,
                              signed_zeros=self.signed_zeros)
        except StaleCut:  # the tables changed since the cuts: recompute this level only
            self._series = None
            fresh = cuts_for_levels(dense, p.norm, p.block_shape, [p.level])
            return apply_cuts(dense, fresh.for_level(p.level), p.norm, p.block_shape, out=buffers,
                              signed_zeros=self.signed_zeros)

    def release(self) -> None:
        """Drop the cached cuts and pruned buffers."""
        self._series = None
        self._buffers = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(pl_module)
        if self.out_dir and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            row = {
                **point_columns(trainer),
                "precision": metrics["test/precision"],
                "recall": metrics["test/recall"],
                "f1": metrics["test/f1"],
                "roc_auc": metrics["test/auc"],
                "accuracy": metrics["test/accuracy"],
                "log_loss": metrics["test/log_loss"],
                "ne": metrics["test/ne"],
                "calibration": metrics["test/calibration"],
                "step_time_sec": self.step_time_sec,
            }
            upsert_rows(self.out_dir, METRICS_CSV, [row])

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module: L.LightningModule) -> None:
        if self._dense is not None:
            pruned = []
            for table, dense in zip(pl_module.model.emb_l, self._dense):
                pruned.append(table.weight.data)
                table.weight.data = dense
            self._dense = None
            if self.keep_buffers:
                self._buffers = pruned


def find_sparsify(trainer: L.Trainer) -> Sparsify | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, Sparsify)), None)


def point_columns(trainer: L.Trainer) -> dict:
    """The grid-point columns of this test run's rows: the ``Sparsify`` point, or ``dense``."""
    sparsify = find_sparsify(trainer)
    if sparsify is None:
        return dict(DENSE)
    point: GridPoint = sparsify.point
    return {
        "norm": point.norm,
        "sparse_block_shape": point.block_shape_str,
        "sparsity_level": point.level,
    }
