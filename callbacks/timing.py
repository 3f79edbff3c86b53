"""``SparseCooTiming``: forward time of the dense model, the reference's sparse-COO path and compact tables.

The reference (``evaluate_forward_time.py``) turns the interaction output ``z`` into a sparse COO
tensor and multiplies it with the first top-MLP layer (:func:`coo_forward`). It timed 99 runs
with ``time.time()``, reported their mean, and never synchronised the GPU. Here: the first test
batch (optionally cut to ``batch_size`` rows), ``warmup`` untimed runs, then ``repeats`` timed runs
of each path with ``time.perf_counter`` and a device synchronisation around every run on CUDA;
``time_taken`` is the median, and the spread (p10, p90, mean) sits in extra columns. Under DDP
only the first process times (the others would repeat it, on shared cores slowing it down) and writes.

The third path, ``compact``, is lit_dlrm's answer to the reference's finding that COO saves
nothing: the same model with its pruned tables stored as :class:`CompactEmbeddingBag` (only the
surviving blocks; :func:`lit_dlrm.sparsity.compact.compact_model`), built once per test run
(``build_s``, not timed inside the repeats).

With ``out_dir`` set, three rows per test run go to ``dlrm_forward_time_info.csv``:
``dlrm_type`` ``without_torch_sparse`` (dense), ``with_torch_sparse`` (COO) and ``compact``. Every
row has ``table_bytes``, the in-memory bytes of the embedding tables that path uses (the COO path
keeps the dense tables: the same as dense). The COO row adds ``coo_table_bytes``, what
``torch.sparse_coo`` tables of the surviving values would take (int64 indices 2 x nnz + values,
overhead ignored), which shows why COO storage saves no memory; the compact row adds ``build_s``
and ``max_abs_diff``, the largest |compact logit - dense logit| on the timed batch (a built-in
correctness check).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from callbacks.sparsification import find_sparsify, point_columns
from lit_dlrm.model import DLRM
from lit_dlrm.paths import check_directory
from lit_dlrm.results import FORWARD_TIME_CSV, upsert_rows
from lit_dlrm.sparsity.compact import compact_model, coo_nbytes, table_bytes


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


def block_width(trainer: L.Trainer, model: DLRM) -> int:
    """Width of the pruned blocks of this test run (1 when unpruned or when it does not divide d)."""
    sparsify = find_sparsify(trainer)
    width = 1 if sparsify is None else int(sparsify.point.block_shape[1])
    return width if model.emb_l[0].embedding_dim % width == 0 else 1


class SparseCooTiming(Callback):
    """Times dense vs COO vs compact-table forward passes on the first test batch.

    Args:
        out_dir: where to add this run's rows of ``dlrm_forward_time_info.csv``; None writes nothing.
        batch_size: rows of the first test batch to time on (None: all of it; the reference used 16384).
        warmup: untimed runs before timing.
        repeats: timed runs per path (the reference used 99).
    """

    def __init__(
        self,
        out_dir: str | None = None,
        batch_size: int | None = None,
        warmup: int = 2,
        repeats: int = 10,
    ) -> None:
        if repeats < 1 or warmup < 0:
            raise ValueError(
                f"timing.repeats must be >= 1 and timing.warmup >= 0, got {repeats}, {warmup}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"timing.batch_size must be >= 1, got {batch_size}")
        check_directory("out_dir", out_dir)
        self.out_dir, self.batch_size, self.warmup, self.repeats = (
            out_dir,
            batch_size,
            warmup,
            repeats,
        )
        self.rows: list[dict] = []

    def on_test_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        dense, sparse = batch[0][: self.batch_size], batch[1][: self.batch_size]
        model: DLRM = pl_module.model
        with torch.no_grad():
            start = time.perf_counter()
            compact = compact_model(model, block_width(trainer, model))
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
            seconds = time_runs(run, dense.device, self.warmup, self.repeats)
            self.rows.append(
                {
                    **point_columns(trainer),
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
        if self.out_dir and trainer.is_global_zero and self.rows:
            upsert_rows(self.out_dir, FORWARD_TIME_CSV, self.rows)
