"""``Sparsify``: apply one grid point to the model for the length of a ``trainer.test``.

In ``on_test_start``, in this order (each step only where the point asks for it):

1. **prune** the embedding tables: masks of PyTorch's ``DataNormSparsifier``
   (:mod:`lit_dlrm.sparsity.masks`), each table at ``level`` (``threshold="per_table"``, the
   reference) or one score threshold across all tables (``"global"``,
   :mod:`lit_dlrm.sparsity.global_threshold`);
2. **fine-tune** ``finetune_steps`` training steps with the masks held fixed
   (:mod:`lit_dlrm.sparsity.finetune`);
3. **quantise** the tables row-wise to ``weight_bits`` 8 or 4 and back
   (:mod:`lit_dlrm.sparsity.quantize`; pruned zeros stay exactly zero), so the test scores what
   an integer model would compute;
4. set the model's ``activation_sparsity`` (:func:`lit_dlrm.model.sparsify_activations`).

The pruned tables are written into separate buffers swapped into the parameters; the dense
originals are kept aside (not copied) and swapped back in ``on_test_end`` (or on an exception),
with the MLPs restored after fine-tuning, so the model leaves the test bit-identical to how it
came in. Memory: one extra copy of the embedding tables (the pruned buffers) for the length of
the test, plus O(chunk) temporaries and ~1 MiB of cuts (fine-tuning: plus a copy of the MLPs and
one bool per table weight).

Speed (:mod:`lit_dlrm.sparsity.series`): the cuts of every level of a (norm, block shape) series
come out of the same two counting passes, so when ``plan`` lists the points to come (the sweep
sets it), the first point of a series computes the cuts of all its levels and the following
points only run one apply pass. With ``keep_buffers`` (the sweep sets it, and calls
``release()`` at the end) the pruned buffers are reused from point to point instead of being
allocated (and page-faulted) anew: the extra copy then stays allocated between tests. Cached
cuts are safe: every apply counts the blocks it prunes, and a cut that does not prune exactly
``k`` blocks of the tables it reads (they changed) is recomputed; one that does is exact.

With ``out_dir`` set, the test metrics of the pruned model go to ``sparse_model_metrics.csv``
(the reference's columns, then the point's further dimensions, ``ne``, ``calibration``,
``step_time_sec`` (pruning) and ``finetune_s``).

Usable alone: ``trainer.test(..., callbacks=[Sparsify("L2", (1, 4), 0.9, out_dir="out")])`` or
``--trainer.callbacks+=callbacks.Sparsify --trainer.callbacks.level=0.9``.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_dlrm.paths import check_directory
from lit_dlrm.results import METRICS_CSV, STUDY_COLUMNS, point_row, upsert_rows
from lit_dlrm.sparsity.finetune import finetune
from lit_dlrm.sparsity.global_threshold import global_cuts
from lit_dlrm.sparsity.grid import GridPoint, make_grid
from lit_dlrm.sparsity.prune import SeriesCuts, StaleCut, apply_cuts, cuts_for_levels
from lit_dlrm.sparsity.quantize import quantize_dequantize_tables

DENSE = {"norm": "dense", "sparse_block_shape": "(1, 1)", "sparsity_level": 0.0, **STUDY_COLUMNS}


# make_grid's option -> the Sparsify argument it checks
OWN_OPTION = {
    "sweep.levels": "sparsify.level",
    "sweep.block_shapes": "sparsify.block_shape",
    "sweep.norms": "sparsify.norm",
    "sweep.thresholds": "sparsify.threshold",
    "sweep.weight_bits": "sparsify.weight_bits",
    "sweep.activation_levels": "sparsify.activation",
    "sweep.finetune_steps": "sparsify.finetune_steps",
}


class Sparsify(Callback):
    """Prune every table with ``norm`` over ``block_shape`` blocks at ``level`` during testing.

    Args:
        norm: ``"L1"`` (block score = mean |w|) or ``"L2"`` (mean w^2).
        block_shape: (height, width) of the blocks removed together.
        level: fraction of each table's blocks zeroed, in [0, 1].
        threshold: ``"per_table"`` (each table loses ``level`` of its blocks) or ``"global"``
            (``level`` of all blocks, lowest scores across all tables).
        weight_bits: 32 (float), or 8 / 4 (row-wise integer tables, dequantised for the test).
        activation: fraction of each row of ``z`` zeroed before the top MLP.
        finetune_steps: training steps after pruning, masks fixed (needs the trainer's datamodule).
        signed_zeros: write zeros as the reference does (``w * mask``: -0.0 for negative weights)
            instead of +0.0. Changes only the sign bits, and so how well a checkpoint compresses.
        out_dir: where to add this point's row of ``sparse_model_metrics.csv``; None writes nothing.
    """

    def __init__(
        self,
        norm: str = "L1",
        block_shape: tuple[int, int] = (1, 4),
        level: float = 0.5,
        threshold: str = "per_table",
        weight_bits: int = 32,
        activation: float = 0.0,
        finetune_steps: int = 0,
        signed_zeros: bool = False,
        out_dir: str | None = None,
    ) -> None:
        try:
            (self.point,) = make_grid(
                [level],
                [block_shape],
                [norm],
                [threshold],
                [weight_bits],
                [activation],
                [finetune_steps],
            )
        except (
            ValueError
        ) as err:  # make_grid names the sweep's list options: name this callback's own
            option, _, reason = str(err).partition(": ")
            raise ValueError(f"{OWN_OPTION.get(option, option)}: {reason}") from err
        check_directory("out_dir", out_dir)
        self.signed_zeros = signed_zeros
        self.out_dir = out_dir
        self.step_time_sec: float | None = None
        self.finetune_s = 0.0
        self.plan: list[GridPoint] | None = None  # points to come (sweep): cuts shared per series
        self.keep_buffers = False  # reuse the pruned buffers across tests (until release())
        self._dense = None
        self._mlps: dict | None = None  # the MLPs' weights before fine-tuning
        self._series: SeriesCuts | None = None
        self._buffers: list | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        point, model = self.point, pl_module.model
        params = [table.weight for table in model.emb_l]
        self._dense = [p.data for p in params]
        start = time.perf_counter()
        pruned = self._prune(self._dense)
        self.step_time_sec = time.perf_counter() - start
        for param, table in zip(params, pruned):
            param.data = table
        self.finetune_s = 0.0
        if point.finetune_steps:
            if trainer.datamodule is None:
                raise ValueError(
                    "sparsify.finetune_steps: fine-tuning needs the trainer's datamodule for training batches"
                )
            self._mlps = {
                k: v.clone() for k, v in model.state_dict().items() if not k.startswith("emb_l.")
            }
            start = time.perf_counter()
            # Every process trains on the same (unsharded) batches: under DDP the replicas take the
            # same steps and stay equal without exchanging gradients.
            batches = trainer.datamodule.dataloader("train", rank=0, world_size=1)
            finetune(pl_module, batches, point.finetune_steps)
            self.finetune_s = time.perf_counter() - start
        if point.weight_bits < 32:
            quantize_dequantize_tables(
                [param.data for param in params], point.weight_bits
            )  # in place
        model.activation_sparsity = point.activation

    def _prune(self, dense: list) -> list:
        """Pruned copies of `dense` (the buffers), with the series' cuts (computed or cached)."""
        p = self.point
        series_of = (p.norm, tuple(p.block_shape), p.threshold)
        key = (*series_of, tuple((tuple(t.shape), t.dtype) for t in dense))
        cached, series = self._series or (None, None)
        if cached != key or float(p.level) not in series.cuts:
            plan = [
                q
                for q in self.plan or []
                if (q.norm, tuple(q.block_shape), q.threshold) == series_of
            ]
            series = self._cuts(dense, sorted({float(p.level)} | {float(q.level) for q in plan}))
            self._series = (key, series)
        buffers, self._buffers = self._buffers, None
        if buffers is None or [(tuple(b.shape), b.dtype) for b in buffers] != list(key[3]):
            buffers = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in dense]
        kw = {"out": buffers, "signed_zeros": self.signed_zeros}
        try:
            return apply_cuts(dense, series.for_level(p.level), p.norm, p.block_shape, **kw)
        except StaleCut:  # the tables changed since the cuts: recompute this level only
            self._series = None
            fresh = self._cuts(dense, [p.level]).for_level(p.level)
            return apply_cuts(dense, fresh, p.norm, p.block_shape, **kw)

    def _cuts(self, dense: list, levels: list[float]) -> SeriesCuts:
        """The cuts of ``levels`` for this point's norm, block shape and threshold."""
        p = self.point
        if p.threshold == "global":
            return global_cuts(dense, p.norm, p.block_shape, levels)
        return cuts_for_levels(dense, p.norm, p.block_shape, levels)

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
                "finetune_s": self.finetune_s,
            }
            upsert_rows(self.out_dir, METRICS_CSV, [row])

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module: L.LightningModule) -> None:
        pl_module.model.activation_sparsity = 0.0
        if self._mlps is not None:
            pl_module.model.load_state_dict(self._mlps, strict=False)
            self._mlps = None
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
    return point_row(sparsify.point)
