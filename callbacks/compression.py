"""``CheckpointCompression``: how large is the (pruned) model on disk, the reference's way and ours.

Measured as the test epoch starts, after ``Sparsify`` has pruned the tables (its
``on_test_start``), on the model's state_dict (CPU copies of the weights):

- the reference: ``torch.save`` wrapped in a ``ZIP_DEFLATED`` zip; reported in bytes
  (``zip_bytes``) next to the reference's floored MiB (``zip_file_size``);
- ``zstd_sparse``: lit_dlrm's sparsity-aware format (bitmask of nonzero values + byte-shuffled
  survivors + zstandard, :mod:`lit_dlrm.sparsity.compression`);

each with its write and read-back time. At a point with ``weight_bits`` 8 or 4 the measured
state holds the integer tables and their row scales
(:func:`lit_dlrm.sparsity.quantize.quantized_state_dict`), what such a model would store.
Files are deleted after measuring unless
``keep_files``; kept ones go to ``<out_dir>/checkpoints/``. With ``out_dir`` set, the row goes
to ``sparse_model_metadata.csv``. Only the first process measures under DDP.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks.sparsification import find_sparsify, point_columns
from lit_dlrm.paths import check_directory
from lit_dlrm.results import METADATA_CSV, upsert_rows
from lit_dlrm.sparsity.compression import reference_zip_size, zstd_sparse_size
from lit_dlrm.sparsity.quantize import quantized_state_dict


class CheckpointCompression(Callback):
    """Args:
    out_dir: where to add this run's row of ``sparse_model_metadata.csv``; None writes nothing.
    keep_files: keep the measured files in ``<out_dir>/checkpoints/`` instead of deleting them.
    """

    def __init__(self, out_dir: str | None = None, keep_files: bool = False) -> None:
        if keep_files and not out_dir:
            raise ValueError("compression.keep_files needs compression.out_dir to keep them in")
        check_directory("out_dir", out_dir)
        self.out_dir, self.keep_files = out_dir, keep_files
        self.row: dict | None = None

    @property
    def scratch(self) -> Path:
        """Where files are written while measured: emptied at each test start, so a killed
        measurement leaves nothing behind for long."""
        return Path(self.out_dir) / ".scratch" if self.out_dir else Path(tempfile.gettempdir())

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out_dir and trainer.is_global_zero:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir(parents=True)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        state = {
            name: tensor.detach().cpu() for name, tensor in pl_module.model.state_dict().items()
        }
        sparsify = find_sparsify(trainer)
        if sparsify and sparsify.point.weight_bits < 32:
            state = quantized_state_dict(state, sparsify.point.weight_bits)
        stem = sparsify.point.key if sparsify else "dense"
        keep = Path(self.out_dir) / "checkpoints" if self.keep_files else None
        reference = reference_zip_size(state, self.scratch, keep_dir=keep, stem=stem)
        ours = zstd_sparse_size(state, self.scratch, keep_dir=keep, stem=stem)
        self.row = {
            **point_columns(trainer),
            "step_time_sec": sparsify.step_time_sec if sparsify else 0.0,
            "zip_file_size": reference.zip_file_size,
            "path": reference.path or "",
            "zip_bytes": reference.bytes,
            "zip_write_s": reference.write_s,
            "zip_read_s": reference.read_s,
            "zstd_sparse_bytes": ours.bytes,
            "zstd_sparse_write_s": ours.write_s,
            "zstd_sparse_read_s": ours.read_s,
            "zstd_sparse_path": ours.path or "",
        }

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out_dir and self.row is not None:
            upsert_rows(self.out_dir, METADATA_CSV, [self.row])
        self.row = None
