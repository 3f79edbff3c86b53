"""Lightning checkpoints written atomically beside their final name, whatever ``$TMPDIR`` is.

Lightning 2.6's ``TorchCheckpointIO`` saves through an fsspec transaction that stages the file in
the system temp directory and then moves it over the target (``shutil.move``). When the temp
directory is on the checkpoint's filesystem that move is a rename, and atomic. When it is not (a
tmpfs ``/tmp``, a node-local scratch disk) the move copies the bytes into the final name: a process
killed during the copy leaves a truncated ``last.ckpt`` that no longer loads, plus a
checkpoint-sized orphan in ``$TMPDIR`` (Lightning issue #21253; reproduced with ``TMPDIR`` on a
tmpfs). The whole checkpoint is also held in memory twice (a ``BytesIO`` and its copy).

:class:`AtomicCheckpointIO` has ``torch.save`` write straight into a hidden temporary file in the
checkpoint's own directory and renames it over the target (:func:`lit_dlrm.paths.atomic_write`),
so the final name always holds a complete checkpoint, the old one or the new one. Temporary files
left by a killed save are removed by the next save into the same directory. Remote paths (``s3://``
...) keep Lightning's own behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from lit_dlrm.paths import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a write to a sibling temp file plus a rename."""

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()  # directories already cleared of a killed save's temp files

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        if path.parent not in self._swept:  # one writer per checkpoint directory (rank 0)
            for stale in path.parent.glob(".*.ckpt.*.tmp"):
                stale.unlink(missing_ok=True)
            self._swept.add(path.parent)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
