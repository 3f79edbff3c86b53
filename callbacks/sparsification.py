"""``Sparsify``: apply one grid point to the model for the length of a ``trainer.test``.

In ``on_test_start``, each step only where the point asks for it: prune the embedding tables
(per table, as PyTorch's ``DataNormSparsifier`` does, or one global threshold), fine-tune with the
masks held fixed, quantise the tables row-wise to ``weight_bits`` and back, set the model's
``activation_sparsity``. ``on_test_end`` (or an exception) restores the model bit-identical, then
adds the test metrics to ``sparse_model_metrics.csv`` (when there is an ``out_dir``).

Memory: one extra copy of the embedding tables while testing. While the context's plan has later
points, the cuts of the whole series and that copy are kept for them; after the last, released.

Usable alone: ``trainer.test(..., callbacks=[Sparsify("L2", (1, 4), 0.9, out_dir="out")])`` or
``--trainer.callbacks+=callbacks.Sparsify --trainer.callbacks.sparsity_level=0.9``.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from lit_dlrm.paths import check_directory
from lit_dlrm.sharded.shards import HeldTables, held_tables, unwrapped
from lit_dlrm.sparsity.finetune import finetune
from lit_dlrm.sparsity.global_threshold import global_cuts
from lit_dlrm.sparsity.prune import SeriesCuts, StaleCut, apply_cuts, cuts_for_levels
from lit_dlrm.sparsity.quantize import quantize_dequantize_tables
from lit_dlrm.sparsity.sharded import shard_cuts, shard_row_amax
from lit_dlrm.sweep.context import SweepCallback, SweepContext
from lit_dlrm.sweep.grid import GridPoint, make_grid
from lit_dlrm.sweep.results import METRICS_CSV


class Sparsify(SweepCallback):
    """Prune every table with ``norm`` over ``sparse_block_shape`` blocks at ``sparsity_level``
    during testing (bound to a sweep: at the context's point instead).

    Args:
        norm: ``"L1"`` (block score = mean |w|) or ``"L2"`` (mean w^2).
        sparse_block_shape: (height, width) of the blocks removed together.
        sparsity_level: fraction of each table's blocks zeroed, in [0, 1].
        threshold: ``"per_table"`` (each table loses ``sparsity_level`` of its blocks) or
            ``"global"`` (that fraction of all blocks, lowest scores across all tables).
        weight_bits: 32 (float), or 8 / 4 (row-wise integer tables, dequantised for the test).
        activation_sparsity: fraction of each row of ``z`` zeroed before the top MLP.
        finetune_steps: training steps after pruning, masks fixed (needs training batches: the
            context's, else the trainer's datamodule's).
        signed_zeros: write zeros as the reference does (``w * mask``: -0.0 for negative weights)
            instead of +0.0. Changes only the sign bits, and so how well a checkpoint compresses.
        out_dir: where to add this point's row of ``sparse_model_metrics.csv``; None: nowhere.

    Raises:
        ValueError: an invalid point, naming the argument (``sparsify.sparsity_level``, ...).
    """

    table = METRICS_CSV
    columns = (
        *("precision", "recall", "f1", "roc_auc", "accuracy", "log_loss", "ne", "calibration"),
        *("step_time_sec", "finetune_s"),
    )

    def __init__(
        self,
        norm: str = "L1",
        sparse_block_shape: tuple[int, int] = (1, 4),
        sparsity_level: float = 0.5,
        threshold: str = "per_table",
        weight_bits: int = 32,
        activation_sparsity: float = 0.0,
        finetune_steps: int = 0,
        signed_zeros: bool = False,
        out_dir: str | None = None,
    ) -> None:
        options = [sparsity_level, sparse_block_shape, norm, threshold, weight_bits]
        options += [activation_sparsity, finetune_steps]
        try:
            (point,) = make_grid(*([value] for value in options))
        except ValueError as err:  # make_grid names the sweep's options: name this callback's
            raise ValueError(str(err).replace("sweep.", "sparsify.", 1)) from err
        check_directory("out_dir", out_dir)
        super().__init__(SweepContext(point, out_dir=out_dir))
        self.signed_zeros = signed_zeros
        self.finetune_s = 0.0
        self._dense = None
        self._mlps: dict | None = None  # the MLPs' weights before fine-tuning
        self._series: SeriesCuts | None = None
        self._buffers: list | None = None  # pruned buffers (sharded: the dense copies) kept
        self._held: HeldTables | None = None

    @property
    def point(self) -> GridPoint:
        """The point applied: the context's."""
        return self.context.point

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        point, model = self.point, pl_module.model
        held = self._held = held_tables(model)
        if held.sharded and point.finetune_steps:
            raise ValueError(
                "sparsify.finetune_steps: fine-tuning sharded tables is not supported (their "
                "fused optimiser cannot hold the masks); sweep a one-file checkpoint "
                "(python -m lit_dlrm.sharded.checkpoint) without the strategy, or leave the "
                "finetune_steps study out"
            )
        start = time.perf_counter()
        if held.sharded:  # FBGEMM's weights cannot be swapped: prune into them, keep a copy
            live = [s.weight for s in held.shards]
            self._dense = self._copies(live)
            self._prune(self._dense, out=live)
        else:
            params = [table.weight for table in model.emb_l]
            self._dense = [p.data for p in params]
            for param, table in zip(params, self._prune(self._dense)):
                param.data = table
        self.context.step_time_sec = time.perf_counter() - start
        self.finetune_s = 0.0
        if point.finetune_steps:
            batches = self.context.finetune_batches
            if batches is None and trainer.datamodule is None:
                raise ValueError("sparsify.finetune_steps: fine-tuning needs training batches")
            if batches is None:  # the same (unsharded) batches on every process: replicas agree
                batches = trainer.datamodule.dataloader("train", rank=0, world_size=1)
            self._mlps = {
                k: v.clone() for k, v in model.state_dict().items() if not k.startswith("emb_l.")
            }
            start = time.perf_counter()
            finetune(pl_module, batches, point.finetune_steps)
            self.finetune_s = time.perf_counter() - start
        if point.weight_bits < 32:
            shards = held_tables(model).shards  # the tables as they now are
            amax = shard_row_amax(shards, held.shapes, held.reduce_max) if held.sharded else None
            quantize_dequantize_tables([s.weight for s in shards], point.weight_bits, row_amax=amax)
        unwrapped(model).activation_sparsity = point.activation_sparsity

    def _copies(self, live: list) -> list:
        """Copies of the sharded tables ``live``: the kept ones, which equal them while the
        plan runs (they are restored from it after each point), else new."""
        kept, self._buffers = self._buffers, None
        if kept is None or [(b.shape, b.dtype) for b in kept] != [(w.shape, w.dtype) for w in live]:
            return [w.clone() for w in live]
        return kept

    def _prune(self, dense: list, out: list | None = None) -> list:
        """`dense` pruned into `out` (None: into the buffers, kept or new), with the series'
        cuts (computed or cached)."""
        p = self.point
        series_of = (p.norm, tuple(p.sparse_block_shape), p.threshold)
        key = (*series_of, tuple((tuple(t.shape), t.dtype) for t in dense))
        cached, series = self._series or (None, None)
        if cached != key or float(p.sparsity_level) not in series.cuts:
            plan = [
                q
                for q in self.context.plan
                if (q.norm, tuple(q.sparse_block_shape), q.threshold) == series_of
            ]
            series = self._cuts(
                dense, sorted({float(p.sparsity_level)} | {float(q.sparsity_level) for q in plan})
            )
            self._series = (key, series)
        if out is None:
            out, self._buffers = self._buffers, None
            if out is None or [(tuple(b.shape), b.dtype) for b in out] != list(key[3]):
                out = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in dense]
        kw = {"out": out, "signed_zeros": self.signed_zeros}
        try:
            return apply_cuts(
                dense, series.for_level(p.sparsity_level), p.norm, p.sparse_block_shape, **kw
            )
        except StaleCut:  # the tables changed since the cuts: recompute this level only
            self._series = None
            fresh = self._cuts(dense, [p.sparsity_level]).for_level(p.sparsity_level)
            return apply_cuts(dense, fresh, p.norm, p.sparse_block_shape, **kw)

    def _cuts(self, dense: list, levels: list[float]) -> SeriesCuts:
        """The cuts of ``levels`` for this point's norm, block shape and threshold."""
        p, held = self.point, self._held
        if held is not None and held.sharded:  # the ranks agree on each cut from all shards
            shards = [s._replace(weight=d) for s, d in zip(held.shards, dense)]
            return shard_cuts(
                shards,
                held.shapes,
                p.norm,
                p.sparse_block_shape,
                levels,
                threshold=p.threshold,
                reduce=held.reduce,
            )
        if p.threshold == "global":
            return global_cuts(dense, p.norm, p.sparse_block_shape, levels)
        return cuts_for_levels(dense, p.norm, p.sparse_block_shape, levels)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(pl_module, keep=bool(self.context.plan))
        metrics = {k.removeprefix("test/"): float(v) for k, v in trainer.callback_metrics.items()}
        metrics.update(roc_auc=metrics.get("auc"), finetune_s=self.finetune_s)
        self.write(trainer, [{**metrics, "step_time_sec": self.context.step_time_sec}])

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore(pl_module, keep=False)

    def _restore(self, pl_module: L.LightningModule, keep: bool) -> None:
        """Put the dense tables and the MLPs back; keep the pruned buffers and cuts for the plan's
        later points when `keep`, else release them."""
        unwrapped(pl_module.model).activation_sparsity = 0.0
        if self._mlps is not None:
            pl_module.model.load_state_dict(self._mlps, strict=False)
            self._mlps = None
        if self._dense is not None and self._held.sharded:
            with torch.no_grad():
                for shard, dense in zip(self._held.shards, self._dense):
                    shard.weight.copy_(dense)
            self._buffers = self._dense if keep else None
            self._dense = None
        elif self._dense is not None:
            pruned = []
            for table, dense in zip(pl_module.model.emb_l, self._dense):
                pruned.append(table.weight.data)
                table.weight.data = dense
            self._dense = None
            self._buffers = pruned if keep else None
        if not keep:
            self._series = None
