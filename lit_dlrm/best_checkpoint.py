"""The best-checkpoint callback, kept consistent with ``last.ckpt`` when a run is killed.

Lightning's ``ModelCheckpoint`` writes a new best file and deletes the one it supersedes at once;
``last.ckpt``, written by another callback a moment later, is what records the change. A run
killed between the two (at the Kaggle size the ``last.ckpt`` write takes seconds) resumes from a
``last.ckpt`` whose best file is gone: the run then tests a missing file or, if it improves
again, keeps a model worse than the one its killed predecessor left behind, next to that
untracked file, which ``latest_checkpoint`` may then pick by its date.

:class:`BestCheckpoint` deletes a superseded file only at its next save point or when the fit
ends, after ``last.ckpt`` has recorded the change, and a resumed run deletes the best files its
checkpoint does not know of (written after it by the killed run, whose training is being redone).
"""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files on disk always include those the newest checkpoint names."""

    _superseded: tuple[str, ...] = ()

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._superseded = (*self._superseded, filepath)  # removed at the next save point

    def _remove_superseded(self, trainer: L.Trainer) -> None:
        for path in self._superseded:
            super()._remove_checkpoint(trainer, path)
        self._superseded = ()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_superseded(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_superseded(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_superseded(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resuming: delete this callback's files that the restored state does not know of."""
        prefix = (self.filename or "").split("{")[0]  # "best-" of "best-epoch{epoch:02d}-..."
        restored = trainer.ckpt_path and self.best_k_models  # and into this directory
        if not (
            restored and prefix and trainer.is_global_zero and _is_local_file_protocol(self.dirpath)
        ):
            return
        known = {
            Path(p).resolve()
            for p in (*self.best_k_models, self.last_model_path, trainer.ckpt_path)
            if p
        }
        for path in Path(self.dirpath).glob(glob.escape(prefix) + "*" + self.FILE_EXTENSION):
            if path.resolve() not in known:
                path.unlink()
