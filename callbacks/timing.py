"""``SparseCooTiming``: forward time of the dense model and of the reference's sparse-COO path.

The reference (``evaluate_forward_time.py``) turns the interaction output ``z`` into a sparse COO
tensor and multiplies it with the first top-MLP layer (:func:`coo_forward`). It timed 99 runs
with ``time.time()``, reported their mean, and never synchronised the GPU. Here: the first test
batch (optionally cut to ``batch_size`` rows), ``warmup`` untimed runs, then ``repeats`` timed runs
of each path with ``time.perf_counter`` and a device synchronisation around every run on CUDA;
``time_taken`` is the median, and the spread (p10, p90, mean) sits in extra columns.

With ``out_dir`` set, two rows per test run go to ``dlrm_forward_time_info.csv``:
``dlrm_type`` ``without_torch_sparse`` (dense) and ``with_torch_sparse`` (COO).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from callbacks.sparsification import point_columns
from lit_dlrm.model import DLRM
from lit_dlrm.results import FORWARD_TIME_CSV, upsert_rows


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


class SparseCooTiming(Callback):
    """Times dense vs COO forward passes on the first test batch.

    Args:
        out_dir: where to add this run's rows of ``dlrm_forward_time_info.csv``; None writes nothing.
        batch_size: rows of the first test batch to time on (None: all of it; the reference used 16384).
        warmup: untimed runs before timing.
        repeats: timed runs per path (the reference used 99).
    """

    def __init__(self, out_dir: str | None = None, batch_size: int | None = None, warmup: int = 2, repeats: int = 10) -> None:
        if repeats < 1 or warmup < 0:
            raise ValueError(f"timing.repeats must be >= 1 and timing.warmup >= 0, got {repeats}, {warmup}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"timing.batch_size must be >= 1, got {batch_size}")
        self.out_dir, self.batch_size, self.warmup, self.repeats = out_dir, batch_size, warmup, repeats
        self.rows: list[dict] = []

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0:
            return
        dense, sparse = batch[0][: self.batch_size], batch[1][: self.batch_size]
        model: DLRM = pl_module.model
        paths = {
            "without_torch_sparse": lambda: model(dense, sparse),
            "with_torch_sparse": lambda: coo_forward(model, dense, sparse),
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
                }
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out_dir and trainer.is_global_zero and self.rows:
            upsert_rows(self.out_dir, FORWARD_TIME_CSV, self.rows)
