"""``CheckpointCompression``: the (pruned) model's size on disk, the reference's way and lit_dlrm's.

As the test epoch starts (after pruning), the model's state_dict (CPU copies; at a point with
``weight_bits`` 8 or 4, the integer tables and their row scales; sharded tables gathered whole to
the first process) is written and read back twice:
the reference's ``torch.save`` in a ``ZIP_DEFLATED`` zip (``zip_bytes``, and the reference's
floored MiB ``zip_file_size``) and lit_dlrm's ``zstd_sparse`` format
(:mod:`lit_dlrm.sparsity.compression`), each with its write and read time. With sharded tables,
each process also writes the part it holds (:func:`~lit_dlrm.sharded.shards.held_state`) in the
``zstd_sparse`` format, and the parts' bytes summed over the processes are
``zstd_sparse_sharded_bytes``: the size of a sharded checkpoint, which needs no process to hold
every table (``one_file=False`` skips the gathered measurement; ``reference_zip=False`` skips
the reference's zip, the costliest measurement of a point; ``measure_read=False`` the reading
back). The row goes to
``sparse_model_metadata.csv`` (when there is an ``out_dir``); the first process writes it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch

from lit_dlrm.paths import check_directory
from lit_dlrm.sharded.shards import held_state, held_tables, whole_state
from lit_dlrm.sparsity.compression import reference_zip_size, zstd_sparse_size
from lit_dlrm.sparsity.quantize import quantized_state_dict
from lit_dlrm.sweep.context import SweepCallback, SweepContext
from lit_dlrm.sweep.results import METADATA_CSV


class CheckpointCompression(SweepCallback):
    """Args:
    out_dir: where to add this run's row of ``sparse_model_metadata.csv``; None writes nothing.
    keep_files: keep the measured files in ``<out_dir>/checkpoints/`` (needs an out_dir) instead
        of deleting them.
    one_file: measure the one-file checkpoint (with sharded tables: gathered to the first
        process, which must hold them all); False leaves its columns empty.
    reference_zip: measure the reference's zip of the one-file checkpoint; False leaves the
        ``zip_*`` columns empty (``zip_file_size`` too).
    measure_read: time reading each file back (``zip_read_s``, ``zstd_sparse_read_s``); False
        leaves those columns empty (the reference reads nothing back).
    """

    table = METADATA_CSV
    columns = (
        *("step_time_sec", "zip_file_size", "path", "zip_bytes", "zip_write_s", "zip_read_s"),
        *("zstd_sparse_bytes", "zstd_sparse_write_s", "zstd_sparse_read_s", "zstd_sparse_path"),
        "zstd_sparse_sharded_bytes",
    )

    def __init__(
        self,
        out_dir: str | None = None,
        keep_files: bool = False,
        one_file: bool = True,
        reference_zip: bool = True,
        measure_read: bool = True,
    ) -> None:
        check_directory("out_dir", out_dir)
        super().__init__(SweepContext(out_dir=out_dir))
        self.keep_files = keep_files
        self.one_file = one_file
        self.reference_zip = reference_zip
        self.measure_read = measure_read
        self.row: dict | None = None

    @property
    def scratch(self) -> Path:
        """Where files are written while measured: emptied at each test start, so a killed
        measurement leaves nothing behind for long."""
        out_dir = self.context.out_dir
        return Path(out_dir) / ".scratch" if out_dir else Path(tempfile.gettempdir())

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep_files and not self.context.out_dir:
            raise ValueError("compression.keep_files needs an out_dir to keep them in")
        if self.context.out_dir and trainer.is_global_zero:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir(parents=True)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        point, network = self.context.point, pl_module.model
        held = held_tables(network)
        keep = Path(self.context.out_dir) / "checkpoints" if self.keep_files else None
        row = {"step_time_sec": self.context.step_time_sec, "zip_file_size": None, "path": ""}
        if held.sharded:  # every process writes its part; the other ranks' scratch is their own
            part = self._state(held_state(network), point.weight_bits)
            scratch = self.scratch if trainer.is_global_zero else Path(tempfile.gettempdir())
            stem = f"{point.key}.rank{trainer.global_rank}"
            size = torch.tensor([zstd_sparse_size(part, scratch, keep, stem).bytes])
            held.reduce(size)
            row["zstd_sparse_sharded_bytes"] = int(size)
        whole = whole_state(network) if self.one_file else None  # sharded: every rank calls it
        if whole is not None:
            state = self._state(whole, point.weight_bits)
            if self.reference_zip:
                reference = reference_zip_size(
                    state, self.scratch, keep, point.key, measure_read=self.measure_read
                )
                row.update(
                    zip_file_size=reference.zip_file_size,
                    path=reference.path or "",
                    zip_bytes=reference.bytes,
                    zip_write_s=reference.write_s,
                    zip_read_s=reference.read_s,
                )
            ours = zstd_sparse_size(
                state, self.scratch, keep, point.key, measure_read=self.measure_read
            )
            row.update(
                zstd_sparse_bytes=ours.bytes,
                zstd_sparse_write_s=ours.write_s,
                zstd_sparse_read_s=ours.read_s,
                zstd_sparse_path=ours.path or "",
            )
        self.row = row if trainer.is_global_zero else None

    @staticmethod
    def _state(state: dict[str, torch.Tensor], weight_bits: int) -> dict[str, torch.Tensor]:
        """CPU copies of ``state``, its tables quantised at a ``weight_bits`` < 32 point."""
        state = {k: tensor.detach().cpu() for k, tensor in state.items()}
        return quantized_state_dict(state, weight_bits) if weight_bits < 32 else state

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.row is not None:
            self.write(trainer, [self.row])
        self.row = None
