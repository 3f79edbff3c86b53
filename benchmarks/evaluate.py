"""Evaluation speed: one grid point's test loop, the sweep's way against the reference's.

    python -m benchmarks.evaluate --scale small   # tables capped at 20k rows, 200k test rows
    python -m benchmarks.evaluate --scale kaggle  # Kaggle table sizes (2.16 GB), 3.27M test rows

lit_dlrm: ``trainer.test`` of ``DLRMModule`` over ``CriteoDataModule``-style batches sliced from
memory-mapped arrays, in the main process (the data module's default, ``num_workers=0``), exact
AUC and the other metrics from torchmetrics. Reference: a loop written the way the reference's
``evaluate_model_metrics.py`` evaluates: a per-sample dataset, a Python collate that builds each
batch from lists, its DataLoader's 7 worker processes (``dlrm_utils.make_test_data_loader``), no
``no_grad``, predictions gathered into numpy, scikit-learn metrics last. Same arrays, same model,
same rows, batch 16384, both sides in this process, ``repeats`` times in ABBA order; the timer
covers ``trainer.test`` whole (its setup included) and the reference's loop from its first batch
(the workers start inside it). Same work: both sides' AUC must agree within 1e-5. Peak memory is
this process's: the reference's workers are not counted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    OURS,
    REF,
    SLOW_REPEATS,
    alternate,
    check_same_work,
    compare,
    main_for,
    timed,
)
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES

# scale: (table cap, test rows)
SCALES = {"tiny": (500, 20_000), "small": (20_000, 200_000), "kaggle": (None, 3_274_330)}
BATCH = 16_384  # the reference's test batch
REFERENCE_WORKERS = 7  # the reference's test DataLoader (PyTorch's dlrm_utils.py)


def table_sizes(scale: str) -> list[int]:
    cap = SCALES[scale][0]
    return [n if cap is None else min(n, cap) for n in KAGGLE_TABLE_SIZES]


def write_arrays(directory: Path, sizes: list[int], rows: int, seed: int = 0) -> None:
    """Test rows in the cache layout (dense int32, sparse int32, label uint8), made in chunks."""
    rng = np.random.default_rng(seed)
    dense = np.lib.format.open_memmap(directory / "dense.npy", "w+", np.int32, (rows, 13))
    sparse = np.lib.format.open_memmap(directory / "sparse.npy", "w+", np.int32, (rows, len(sizes)))
    label = np.lib.format.open_memmap(directory / "label.npy", "w+", np.uint8, (rows,))
    for start in range(0, rows, 1 << 18):
        stop = min(rows, start + (1 << 18))
        dense[start:stop] = rng.integers(0, 1000, (stop - start, 13))
        sparse[start:stop] = (rng.random((stop - start, len(sizes))) * np.asarray(sizes)).astype(
            np.int32
        )
        label[start:stop] = rng.random(stop - start) < 0.256
    for array in (dense, sparse, label):
        array.flush()


def model_for(sizes: list[int]):
    from lit_dlrm.module import DLRMModule

    torch.manual_seed(0)
    return DLRMModule(sizes)


def lit_test(module, directory: str, rows: int) -> float:
    """The sweep's way: trainer.test over batches sliced from the memory-mapped arrays -> AUC."""
    import lightning as L

    from lit_dlrm.data.datamodule import CriteoBatches, ShardedBatchSampler

    loader = torch.utils.data.DataLoader(
        CriteoBatches(directory),
        batch_size=None,
        sampler=ShardedBatchSampler(0, rows, BATCH, shuffle=False),
    )
    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    (metrics,) = trainer.test(module, dataloaders=loader, verbose=False)
    return float(metrics["test/auc"])


class PerSampleRows(torch.utils.data.Dataset):
    """The reference's dataset: one row at a time, as numpy rows: rows [start, start + rows)."""

    def __init__(self, directory: str, rows: int, start: int = 0):
        self.arrays = [
            np.load(Path(directory) / f"{k}.npy", mmap_mode="r")
            for k in ("dense", "sparse", "label")
        ]
        self.rows, self.start = rows, start

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i):
        dense, sparse, label = self.arrays
        i += self.start
        return dense[i], sparse[i], label[i]


def collate_like_reference(batch):
    """Transpose the list of rows and build tensors from Python lists, as dlrm's collate does."""
    dense, sparse, label = list(zip(*batch))
    dense = torch.log(torch.tensor(np.array(dense), dtype=torch.float) + 1)
    sparse = torch.tensor(np.array(sparse), dtype=torch.long)
    label = torch.tensor(np.array(label), dtype=torch.float32).view(-1, 1)
    return dense, sparse, label


def reference_test(model, directory: str, rows: int, workers: int, start: int = 0) -> float:
    """The reference's way over rows [start, start + rows): per-sample loading on ``workers``
    processes, no no_grad, scikit-learn metrics at the end -> AUC."""
    from sklearn import metrics as skm

    loader = torch.utils.data.DataLoader(
        PerSampleRows(directory, rows, start),
        batch_size=BATCH,
        collate_fn=collate_like_reference,
        num_workers=workers,
    )
    scores, targets = [], []
    for dense, sparse, label in loader:
        scores.append(torch.sigmoid(model(dense, sparse)).detach().cpu().numpy())
        targets.append(label.numpy().ravel())
    scores, targets = np.concatenate(scores), np.concatenate(targets)
    predicted = np.round(scores)
    auc = skm.roc_auc_score(targets, scores)
    for metric in (skm.precision_score, skm.recall_score, skm.f1_score, skm.accuracy_score):
        metric(targets, predicted)
    skm.log_loss(targets, scores)
    return float(auc)


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    """The test loop at ``scale``, both sides on the same rows; rows of the harness's schema."""
    repeats = repeats or SLOW_REPEATS[scale]
    rows = SCALES[scale][1]
    sizes = table_sizes(scale)
    module = model_for(sizes)
    workers = REFERENCE_WORKERS
    with tempfile.TemporaryDirectory() as tmp:
        write_arrays(Path(tmp), sizes, rows)
        torch.set_grad_enabled(True)  # the reference's loop runs without no_grad
        samples = alternate(
            {
                OURS: lambda: timed(lambda: lit_test(module, tmp, rows), lambda auc: auc),
                REF: lambda: timed(
                    lambda: reference_test(module.model, tmp, rows, workers), lambda auc: auc
                ),
            },
            repeats,
        )
    check_same_work("test loop", samples, lambda a, b: abs(a - b) <= 1e-5, "AUCs within 1e-5")
    for side in samples.values():  # seconds -> samples/s
        for s in side:
            s.value = rows / s.value
    return [
        compare(
            "test loop (one grid point)",
            "samples/s",
            samples,
            better="higher",
            note=f"{rows:,} rows, batch {BATCH}; lit_dlrm: trainer.test (setup included), "
            f"0 loader workers; reference-style loop: {workers} loader workers (the "
            "reference's; their memory not counted)",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    main_for("evaluate", run, argv, __doc__.splitlines()[0], sorted(SCALES))


if __name__ == "__main__":
    main()
