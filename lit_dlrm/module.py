"""``DLRMModule``: the Lightning wrapper around :class:`lit_dlrm.model.DLRM`.

Thin on purpose: the loss, the optimiser and the metrics live here; the data lives in
:mod:`lit_dlrm.data`, the pruning in :mod:`lit_dlrm.sparsity` and :mod:`callbacks`.

A batch is ``(dense (B, 13) float, sparse (B, 26) int, labels (B,) float)``. Logged names are
``{train,val,test}/{auc,log_loss,ne,accuracy,precision,recall,f1,calibration}`` plus
``train/loss`` (mean over each ``log_every_n_steps`` interval). TensorBoard's HParams session is
:class:`lit_dlrm.hparams.HParamsSummary`'s. The progress bar shows ``train/loss``, ``val/auc`` and
``val/log_loss`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lit_dlrm.checkpoint import CheckpointError, architecture, load_state_dict
from lit_dlrm.metrics import ClickMetrics
from lit_dlrm.model import DLRM, Interaction
from lit_dlrm.sharded.keys import to_torchrec
from lit_dlrm.sparse_sync import average_sparse_grads, ignore_in_ddp

Optimizer = Literal["sgd", "adagrad"]
OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}  # --model.optimizer
Backend = Literal["torch", "torchrec"]
# A learning-rate schedule: given the optimiser, the scheduler (stepped once per optimiser step).
Schedule = Callable[[torch.optim.Optimizer], LRScheduler]


PROGRESS_BAR = ("auc", "log_loss")  # the validation metrics on the progress bar


def torchrec_network() -> type[DLRM]:
    """:class:`lit_dlrm.sharded.model.TorchRecDLRM`, or an error saying how to install TorchRec."""
    try:
        from lit_dlrm.sharded.model import TorchRecDLRM
    except ImportError as err:
        raise ImportError(
            f"model.backend=torchrec needs TorchRec, which failed to import ({err}); install it "
            "as the README's 'Scaling out' section says"
        ) from err
    return TorchRecDLRM


class BottomCache:
    """The bottom MLP's output of each test batch, kept for later tests: reused while a batch's
    dense rows and the bottom MLP's weights equal those it was computed from (a sweep's tests
    change only the tables; a fine-tuned point's bottom MLP differs and is computed afresh).
    Holds the dense rows (B, 13) and the output (B, d) of every batch of a test split, side by
    side in slabs of ``SLAB_ROWS`` rows: a few large allocations, which the allocator maps and
    unmaps whole. Two small ones per batch, long-lived among each batch's freed temporaries,
    kept those temporaries' heap pages resident (docs/design.md)."""

    SLAB_ROWS = 1 << 20

    def __init__(self) -> None:
        self.weights: list[Tensor] = []
        self.batches: dict[int, tuple[Tensor, Tensor]] = {}
        self._slab: Tensor | None = None  # (SLAB_ROWS, 13 + d), filled from row self._used
        self._used = 0

    def __call__(self, bot_l: torch.nn.Module, dense: Tensor, batch_idx: int) -> Tensor:
        """``bot_l(dense)``, computed or reused; ``batch_idx``: the batch's place in its test."""
        weights = [p.detach() for p in bot_l.parameters()]
        if len(weights) != len(self.weights) or not all(map(torch.equal, weights, self.weights)):
            self.weights, self.batches, self._slab = [w.clone() for w in weights], {}, None
        kept = self.batches.get(batch_idx)
        if kept is not None and kept[0].shape == dense.shape and torch.equal(kept[0], dense):
            return kept[1]
        self.batches[batch_idx] = kept = self._keep(dense, bot_l(dense))
        return kept[1]

    def _keep(self, dense: Tensor, bottom: Tensor) -> tuple[Tensor, Tensor]:
        """Copies of ``dense`` (B, 13) and ``bottom`` (B, d), side by side in a slab."""
        rows, width = dense.shape[0], dense.shape[1] + bottom.shape[1]
        slab = self._slab
        if (
            slab is None
            or self._used + rows > slab.shape[0]
            or (slab.shape[1], slab.dtype, slab.device) != (width, bottom.dtype, bottom.device)
        ):
            if dense.dtype != bottom.dtype:  # not one slab's dtype: kept as they are
                return dense, bottom
            slab = self._slab = bottom.new_empty(max(rows, self.SLAB_ROWS), width)
            self._used = 0
        both = slab[self._used : self._used + rows]
        self._used += rows
        both[:, : dense.shape[1]], both[:, dense.shape[1] :] = dense, bottom
        return both[:, : dense.shape[1]], both[:, dense.shape[1] :]


class DLRMModule(L.LightningModule):
    """DLRM trained with binary cross-entropy on click labels.

    Args:
        table_sizes: rows of each embedding table. None: the network is built in
            ``configure_model`` from the datamodule's ``table_sizes`` (known after its setup),
            which are then saved in ``hparams`` and so in every checkpoint.
        num_dense, embedding_dim, bottom_mlp, top_mlp, interaction: see :class:`DLRM`.
        optimizer: ``"sgd"``, the reference recipe (plain SGD, sparse embedding gradients), or
            ``"adagrad"`` (adaptive per coordinate, also on sparse gradients; the usual choice
            for embedding tables).
        lr: learning rate (the reference uses 0.1 with SGD).
        lr_scheduler: None (a constant ``lr``) or a function of the optimiser giving a torch
            ``LRScheduler``, stepped after every optimiser step (so its step counts are optimiser
            steps), e.g. :class:`lit_dlrm.schedules.WarmupPolyDecay`, dlrm's warm-up and decay.
            On the command line: ``--model.lr_scheduler=WarmupPolyDecay
            --model.lr_scheduler.warmup_steps=...``. Built once on a probe optimiser here, so
            bad arguments fail at construction. ``ReduceLROnPlateau`` is refused (it needs a
            metric at every step).
        backend: ``"torch"`` (``nn.EmbeddingBag`` tables, :class:`DLRM`) or ``"torchrec"`` (a
            TorchRec ``EmbeddingBagCollection``, :class:`lit_dlrm.sharded.model.TorchRecDLRM`,
            which TorchRec's ``DistributedModelParallel`` can shard; an optional install).
            Same network, same logits; the state-dict keys of the tables differ
            (:mod:`lit_dlrm.sharded.keys`), and checkpoints read as the reference's either way.

    Only the optimisers that take the tables' sparse gradients are offered (``optimizer``);
    the schedule scales their learning rates and leaves the gradients alone.
    """

    def __init__(
        self,
        table_sizes: list[int] | None = None,
        num_dense: int = 13,
        embedding_dim: int = 16,
        bottom_mlp: list[int] = [512, 256, 64],  # noqa: B006 (LightningCLI needs plain defaults)
        top_mlp: list[int] = [512, 256],  # noqa: B006
        interaction: Interaction = "dot",
        optimizer: Optimizer = "sgd",
        lr: float = 0.1,
        lr_scheduler: Schedule | None = None,
        backend: Backend = "torch",
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"model.optimizer: expected 'sgd' or 'adagrad', got {optimizer!r}")
        if backend not in ("torch", "torchrec"):
            raise ValueError(f"model.backend: expected 'torch' or 'torchrec', got {backend!r}")
        if not lr > 0:
            raise ValueError(f"model.lr: expected a positive learning rate, got {lr}")
        for name, value in (
            ("num_dense", num_dense),
            ("embedding_dim", embedding_dim),
            ("bottom_mlp", bottom_mlp),
            ("top_mlp", top_mlp),
        ):
            if any(width < 1 for width in ([value] if isinstance(value, int) else value)):
                raise ValueError(f"model.{name}: expected positive sizes, got {value}")
        if lr_scheduler is not None:
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
            try:
                schedule = lr_scheduler(probe)
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.lr_scheduler: {err}") from err
            if isinstance(schedule, ReduceLROnPlateau) or not isinstance(schedule, LRScheduler):
                raise ValueError(
                    "model.lr_scheduler: expected a schedule of the step count (a torch "
                    f"LRScheduler other than ReduceLROnPlateau), got {type(schedule).__name__}"
                )
        self.make_schedule = lr_scheduler
        self.save_hyperparameters()
        self.model: DLRM | None = None
        self._sync_tables = False  # set by setup under DDP
        # tests reuse the bottom MLP's outputs while set (a sweep's tests: lit_dlrm.sweep.driver)
        self.bottom_cache: BottomCache | None = None
        if table_sizes is not None:
            self.configure_model()
        self.train_metrics = ClickMetrics(auc_bins=200)
        self.val_metrics = ClickMetrics()
        self.test_metrics = ClickMetrics()
        self._loss_sum, self._loss_steps = 0.0, 0

    @classmethod
    def from_weights(cls, path: str, backend: Backend = "torch") -> DLRMModule:
        """A module holding the DLRM weights in ``path``: a lit_dlrm checkpoint, a
        facebookresearch/dlrm ``--save-model`` file or a bare state_dict (read safely), its
        tables in ``backend``. With the torch backend the weights of a torch zip file stay mapped
        from it, copy-on-write: the file's pages, not a copy in the process's own memory."""
        state = load_state_dict(path, mmap=backend == "torch")
        try:
            module = cls(**architecture(state), backend=backend)
            if backend == "torchrec":
                module.model.load_state_dict(to_torchrec(state))
            else:
                module.model.load_state_dict(state, assign=True)
        except (CheckpointError, RuntimeError, KeyError) as err:
            raise CheckpointError(f"{path}: not a DLRM this code can rebuild: {err}") from err
        return module

    def configure_model(self) -> None:
        """Build the network once: from ``table_sizes``, or the trainer's datamodule's."""
        if self.model is None:
            if self.hparams.table_sizes is None:  # saved, so that checkpoints and logs show them
                sizes = list(self.trainer.datamodule.table_sizes)
                self.save_hyperparameters({**self.hparams, "table_sizes": sizes})
            h = self.hparams
            args = (h.table_sizes, h.num_dense, h.embedding_dim, h.bottom_mlp, h.top_mlp)
            if h.backend == "torch":
                self.model = DLRM(*args, h.interaction)
            else:  # tables left unallocated for a strategy that shards them (lit_dlrm.sharded)
                sharded = self._trainer is not None and getattr(
                    self.trainer.strategy, "shards_tables", False
                )
                self.model = torchrec_network()(
                    *args, h.interaction, table_device="meta" if sharded else None
                )
        if self._sync_tables:  # before DDP wraps the module (lit_dlrm.sparse_sync)
            ignore_in_ddp(self, [f"model.emb_l.{i}.weight" for i in range(len(self.model.emb_l))])

    def setup(self, stage: str) -> None:
        # Options the steps depend on, checked before the first batch rather than failing in it.
        data_dense = getattr(self.trainer.datamodule, "num_dense", self.hparams.num_dense)
        if data_dense != self.hparams.num_dense:
            raise ValueError(
                f"model.num_dense: the model takes {self.hparams.num_dense} dense features, "
                f"the data has {data_dense}"
            )
        if stage == "fit" and not self.trainer.log_every_n_steps >= 1:
            raise ValueError(
                "trainer.log_every_n_steps: expected an integer >= 1, "
                f"got {self.trainer.log_every_n_steps}"
            )
        # Under DDP the tables' sparse gradients are averaged by lit_dlrm.sparse_sync, not by DDP.
        # (TorchRec's tables have dense gradients, which DDP all-reduces like the MLPs'.)
        self._sync_tables = (
            stage == "fit"
            and self.hparams.backend == "torch"
            and dist.is_available()
            and dist.is_initialized()
        )

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return self.model(dense, sparse)

    def batch_loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The training loss of a batch -> (logits (B,), mean binary cross-entropy)."""
        dense, sparse, labels = batch
        logits = self.model(dense, sparse)
        return logits, F.binary_cross_entropy_with_logits(logits, labels)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, loss = self.batch_loss(batch)
        self.train_metrics.update(logits, batch[2])
        # self.log costs more than a batch-128 step, and Lightning writes step values only every
        # log_every_n_steps: log the mean loss of those steps when it is about to write them.
        self._loss_sum, self._loss_steps = self._loss_sum + loss.detach(), self._loss_steps + 1
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", self._loss_sum / self._loss_steps, prog_bar=True)
            self._loss_sum, self._loss_steps = 0.0, 0
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        dense, sparse, labels = batch
        self.val_metrics.update(self.model(dense, sparse), labels)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        dense, sparse, labels = batch
        bottom = None
        if self.bottom_cache is not None and isinstance(self.model, DLRM):  # not under DMP
            bottom = self.bottom_cache(self.model.bot_l, dense, batch_idx)
        self.test_metrics.update(self.model(dense, sparse, bottom), labels)

    def _log_global(self, values: dict[str, float], **kwargs) -> None:
        """Log values that are already exact over all processes and the same on each.
        ``sync_dist`` with ``max`` keeps them bit-exact (a mean of copies may round) and tells
        Lightning they are synchronised, so it does not warn under DDP."""
        self.log_dict(values, sync_dist=True, reduce_fx="max", **kwargs)

    def _log_epoch(self, stage: str, metrics: ClickMetrics) -> dict[str, float]:
        values = metrics.compute()  # gathered over all processes: exact, identical on each
        metrics.reset()
        on_bar = PROGRESS_BAR if stage == "val" else ()
        for shown in (True, False):  # the progress bar shows only what a user watches
            logged = {f"{stage}/{k}": v for k, v in values.items() if (k in on_bar) == shown}
            if logged:
                self._log_global(logged, prog_bar=shown)
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._sync_tables:  # once per step, after any gradient accumulation
            average_sparse_grads([table.weight for table in self.model.emb_l])

    def on_fit_start(self) -> None:
        if self._sync_tables:  # DDP broadcasts rank 0's weights only for the parameters it holds
            for table in self.model.emb_l:
                dist.broadcast(table.weight.data, src=0)

    def optimizer_step(self, *args, **kwargs) -> None:
        # Adagrad builds sparse tensors from the tables' gradients, well formed by construction:
        # opt out of torch's invariant checks explicitly (its default, without its warning).
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            super().optimizer_step(*args, **kwargs)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """A fresh ``--model.optimizer`` over all parameters (sparse-gradient safe); for sharded
        tables, over the MLPs, joined with the tables' fused optimiser (lit_dlrm.sharded.optim)."""
        h = self.hparams
        fused = getattr(self.model, "fused_optimizer", None)  # TorchRec's DMP has one
        if fused is not None:
            from lit_dlrm.sharded.optim import combined_optimizer

            return combined_optimizer(self, fused, OPTIMIZERS[h.optimizer], h.lr)
        return OPTIMIZERS[h.optimizer](self.parameters(), lr=h.lr)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The optimiser alone without ``lr_scheduler``, else Lightning's dict with the
        scheduler stepped every optimiser step."""
        optimizer = self.make_optimizer()
        if self.make_schedule is None:
            return optimizer
        schedule = {"scheduler": self.make_schedule(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """A batch ``(dense (B, 13), sparse (B, 26)[, labels])`` -> click probabilities (B,)."""
        return torch.sigmoid(self.model(batch[0], batch[1]))
