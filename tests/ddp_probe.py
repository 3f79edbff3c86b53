"""``Probe``: a callback that records, on every DDP rank, what tests/test_ddp.py compares across
ranks.

Given to ``scripts/train.py`` / ``scripts/sweep.py`` as ``--trainer.callbacks+={"class_path":
"ddp_probe.Probe", ...}`` with tests/ on ``PYTHONPATH``. Each rank appends JSON lines to
``<directory>/rank<r>.jsonl`` (a directory of the test's own, away from the run's outputs):

- ``{"event": "fit", "params": digest, "batches": n}``: every weight after ``fit``, and how many
  training batches this rank ran;
- ``{"event": "test", "point": key, "tables": digest, "rows": n}``: one per ``trainer.test``:
  the Sparsify point, the embedding tables as tested (pruned), how many test rows this rank saw;
- ``{"event": "call", "name": ...}``: each call of a function that writes or measures a sweep
  output (the CSV/report writer, the checkpoint-size measurements, the forward timing).

The test rows of a process's first test go to ``rank<r>-test.npy`` (label, then the 26 ids).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

SPIED = [
    ("lit_dlrm.sweep.results", "atomic_write"),
    ("lit_dlrm.sweep.report", "atomic_write"),
    ("callbacks.compression", "reference_zip_size"),
    ("callbacks.compression", "zstd_sparse_size"),
    ("callbacks.timing", "time_runs"),
]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Probe(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.rank = 0
        self.batches = 0
        self.rows: list[np.ndarray] = []
        self.tests = 0
        self._spying = False

    def record(self, event: dict) -> None:
        with open(self.directory / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps({**event, "pid": os.getpid()}) + "\n")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.rank = trainer.global_rank
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._spying:
            self._spying = True
            for module_name, name in SPIED:
                module = importlib.import_module(module_name)
                setattr(module, name, self._spy(f"{module_name}.{name}", getattr(module, name)))

    def _spy(self, name: str, function):
        def spied(*args, **kwargs):
            self.record({"event": "call", "name": name})
            return function(*args, **kwargs)

        return spied

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p for _, p in sorted(pl_module.named_parameters())]
        self.record({"event": "fit", "params": digest(params), "batches": self.batches})

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        _, sparse, label = batch
        self.rows.append(torch.cat([label[:, None].long(), sparse], dim=1).numpy())  # (B, 27)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Sparsify restores the dense tables in on_test_end: here they are still as tested.
        sparsify = next((cb for cb in trainer.callbacks if type(cb).__name__ == "Sparsify"), None)
        rows = np.concatenate(self.rows) if self.rows else np.empty((0, 27), np.int64)
        self.record(
            {
                "event": "test",
                "point": sparsify.point.key if sparsify else None,
                "tables": digest(table.weight for table in pl_module.model.emb_l),
                "rows": len(rows),
            }
        )
        if self.tests == 0:
            np.save(self.directory / f"rank{self.rank}-test.npy", rows)
        self.tests += 1


def read(directory: Path, rank: int) -> list[dict]:
    """The events rank ``rank`` recorded, in order."""
    lines = (Path(directory) / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
