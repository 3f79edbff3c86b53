"""``SparseCooTiming``: forward time of the dense model, the reference's sparse-COO path and compact
tables, on the first test batch.

Each path (``dlrm_type``): ``without_torch_sparse`` (the dense model), ``with_torch_sparse`` (the
reference's: ``z`` made sparse COO times the first top-MLP layer, :func:`coo_forward`) and
``compact`` (the pruned tables as :class:`CompactEmbeddingBag`, built once per test: ``build_s``)
runs ``warmup`` untimed then ``repeats`` timed times (``time.perf_counter``, synchronised on
CUDA); ``time_taken`` is the median, the spread sits in ``mean_s``, ``p10_s``, ``p90_s``. Every
row has ``table_bytes``, the bytes of the tables that path uses; the COO row adds
``coo_table_bytes`` (``torch.sparse_coo`` tables of the survivors: int64 indices 2 x nnz +
values), the compact row ``max_abs_diff`` (largest |compact logit - dense logit|). Three rows per
test go to ``dlrm_forward_time_info.csv`` (when there is an ``out_dir``); only the first process
times, except that sharded tables (``TorchRecStrategy``) are timed in the sharded forward by every
process together, and compacted from the tables gathered to the first.
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lit_dlrm.model import DLRM
from lit_dlrm.paths import check_directory
from lit_dlrm.sharded.shards import held_tables, unwrapped, whole_network
from lit_dlrm.sparsity.compact import compact_model, coo_nbytes, table_bytes
from lit_dlrm.sweep.context import SweepCallback, SweepContext
from lit_dlrm.sweep.grid import GridPoint
from lit_dlrm.sweep.results import FORWARD_TIME_CSV


def coo_forward(model: DLRM, dense: Tensor, sparse: Tensor) -> Tensor:
    """The reference's ``SparseDLRM``: z (B, 367) made sparse COO, times the first top layer."""
    z = model.features(dense, sparse).to_sparse_coo()
    first = model.top_l[0]
    hidden = torch.sparse.mm(z, first.weight.t()) + first.bias
    return model.top_l[1:](hidden).squeeze(1)


def time_runs(run, device: torch.device, warmup: int, repeats: int) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``run()``, after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def block_width(point: GridPoint, model: DLRM) -> int:
    """Width of the point's pruned blocks (1 when it does not divide the embedding dimension)."""
    width = int(point.sparse_block_shape[1])
    return width if model.emb_l[0].embedding_dim % width == 0 else 1


class SparseCooTiming(SweepCallback):
    """Times dense vs COO vs compact-table forward passes on the first test batch.

    Args:
        out_dir: where to add this run's rows of ``dlrm_forward_time_info.csv``; None: nowhere.
        batch_size: rows of the first test batch to time on (None: all; the reference: 16384).
        warmup: untimed runs before timing.
        repeats: timed runs per path (the reference used 99).
    """

    table = FORWARD_TIME_CSV
    kind = ("dlrm_type", ("without_torch_sparse", "with_torch_sparse", "compact"))
    columns = (
        *("time_taken", "dlrm_type", "mean_s", "p10_s", "p90_s", "repeats", "batch_size"),
        *("device", "table_bytes", "coo_table_bytes", "build_s", "max_abs_diff"),
    )

    def __init__(
        self,
        out_dir: str | None = None,
        batch_size: int | None = None,
        warmup: int = 2,
        repeats: int = 5,
    ) -> None:
        if repeats < 1 or warmup < 0:
            raise ValueError(
                f"timing.repeats must be >= 1 and timing.warmup >= 0, got {repeats}, {warmup}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"timing.batch_size must be >= 1, got {batch_size}")
        check_directory("out_dir", out_dir)
        super().__init__(SweepContext(out_dir=out_dir))
        self.batch_size, self.warmup, self.repeats = batch_size, warmup, repeats
        self.rows: list[dict] = []

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        sharded = held_tables(pl_module.model).sharded
        if batch_idx != 0 or dataloader_idx != 0 or not (trainer.is_global_zero or sharded):
            return
        dense, sparse = batch[0][: self.batch_size], batch[1][: self.batch_size]
        timed = {}  # sharded: the sharded forwards, timed on every rank together (rank 0's kept)
        if sharded:
            network = pl_module.model
            with torch.no_grad():
                for dlrm_type, run in (
                    ("without_torch_sparse", lambda: network(dense, sparse)),
                    ("with_torch_sparse", lambda: coo_forward(unwrapped(network), dense, sparse)),
                ):
                    timed[dlrm_type] = time_runs(run, dense.device, self.warmup, self.repeats)
        model: DLRM | None = whole_network(pl_module.model)  # sharded: gathered to rank 0
        if model is None:
            return
        with torch.no_grad():
            start = time.perf_counter()
            compact = compact_model(model, block_width(self.context.point, model))
            build_s = time.perf_counter() - start
            dense_bytes = table_bytes(model)
            extra = {
                "without_torch_sparse": {"table_bytes": dense_bytes},
                "with_torch_sparse": {
                    "table_bytes": dense_bytes,
                    "coo_table_bytes": sum(coo_nbytes(table.weight) for table in model.emb_l),
                },
                "compact": {
                    "table_bytes": table_bytes(compact),
                    "build_s": build_s,
                    "max_abs_diff": float(
                        (compact(dense, sparse) - model(dense, sparse)).abs().max()
                    ),
                },
            }
        paths = {
            "without_torch_sparse": lambda: model(dense, sparse),
            "with_torch_sparse": lambda: coo_forward(model, dense, sparse),
            "compact": lambda: compact(dense, sparse),
        }
        self.rows = []
        for dlrm_type, run in paths.items():
            seconds = timed.get(dlrm_type)
            if seconds is None:
                seconds = time_runs(run, dense.device, self.warmup, self.repeats)
            self.rows.append(
                {
                    "time_taken": float(np.median(seconds)),
                    "dlrm_type": dlrm_type,
                    "mean_s": float(seconds.mean()),
                    "p10_s": float(np.percentile(seconds, 10)),
                    "p90_s": float(np.percentile(seconds, 90)),
                    "repeats": self.repeats,
                    "batch_size": int(dense.shape[0]),
                    "device": str(dense.device),
                    **extra[dlrm_type],
                }
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, self.rows)
