"""Evaluation speed: the sweep's test loop against the reference's, and dense vs COO forward time.

    python benchmarks/evaluate.py --scale small     # tables capped at 20k rows, 200k test rows
    python benchmarks/evaluate.py --scale kaggle    # Kaggle table sizes (2.16 GB model), 3.27M test rows

*test loop*: samples/s of one grid point's evaluation as the sweep does it (``trainer.test`` of
``DLRMModule`` over ``CriteoDataModule``-style batches sliced from memory-mapped arrays, exact AUC
and the other metrics from torchmetrics) against a loop written the way the reference's
``evaluate_model_metrics.py`` evaluates: a per-sample dataset, a Python collate that builds each batch
from lists, no ``no_grad``, predictions gathered into numpy and scikit-learn metrics at the end.
Same arrays, same model, batch 16384; each side in a fresh process (peak RSS = its ``VmHWM``).
The reference-style loop runs on the first ``--reference-rows`` rows; its rate is compared.

*forward*: median forward time of the dense model and of the reference's COO path
(:func:`callbacks.timing.coo_forward`) on one batch of 16384 (1024 at ``tiny``), tables pruned at L1 (1, 4) levels
0.0, 0.5 and 0.9.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import peak_rss_mib  # noqa: E402
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES  # noqa: E402

# scale: (table cap, test rows, forward-timing batch, forward repeats)
SCALES = {
    "tiny": (500, 20_000, 1024, 2),
    "small": (20_000, 200_000, 16_384, 10),
    "kaggle": (None, 3_274_330, 16_384, 10),
}
BATCH = 16_384  # the reference's test batch


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


def child_lit(directory: str, rows: int, sizes: list[int]) -> dict:
    """The sweep's way: trainer.test over batches sliced from the memory-mapped arrays."""
    import lightning as L

    from lit_dlrm.data.datamodule import CriteoBatches, ShardedBatchSampler

    module = model_for(sizes)
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
    start = time.perf_counter()
    (metrics,) = trainer.test(module, dataloaders=loader, verbose=False)
    return {"seconds": time.perf_counter() - start, "rows": rows, "auc": metrics["test/auc"]}


class PerSampleRows(torch.utils.data.Dataset):
    """The reference's dataset: one row at a time, as numpy rows."""

    def __init__(self, directory: str, rows: int):
        self.arrays = [
            np.load(Path(directory) / f"{k}.npy", mmap_mode="r")
            for k in ("dense", "sparse", "label")
        ]
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i):
        dense, sparse, label = self.arrays
        return dense[i], sparse[i], label[i]


def collate_like_reference(batch):
    """Transpose the list of rows and build tensors from Python lists, as dlrm's collate does."""
    dense, sparse, label = list(zip(*batch))
    dense = torch.log(torch.tensor(np.array(dense), dtype=torch.float) + 1)
    sparse = torch.tensor(np.array(sparse), dtype=torch.long)
    label = torch.tensor(np.array(label), dtype=torch.float32).view(-1, 1)
    return dense, sparse, label


def child_reference(directory: str, rows: int, sizes: list[int]) -> dict:
    """The reference's way: per-sample loading, no no_grad, scikit-learn metrics at the end."""
    from sklearn import metrics as skm

    model = model_for(sizes).model
    loader = torch.utils.data.DataLoader(
        PerSampleRows(directory, rows), batch_size=BATCH, collate_fn=collate_like_reference
    )
    start = time.perf_counter()
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
    return {"seconds": time.perf_counter() - start, "rows": rows, "auc": float(auc)}


def run_child(kind: str, directory: Path, rows: int, scale: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(directory), str(rows), scale]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def forward_rows(scale: str) -> list[dict]:
    from callbacks.timing import coo_forward, time_runs
    from lit_dlrm.sparsity.masks import prune_tables
    from lit_dlrm.sweep.grid import GridPoint

    sizes, (_, _, batch, repeats) = table_sizes(scale), SCALES[scale]
    model = model_for(sizes).model.eval()
    g = torch.Generator().manual_seed(1)
    dense = torch.log1p(torch.randint(0, 1000, (batch, 13), generator=g).float())
    sparse = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in sizes], 1)
    originals = [t.weight.data for t in model.emb_l]
    rows = []
    for level in (0.0, 0.5, 0.9):
        for table, pruned in zip(
            model.emb_l, prune_tables(originals, GridPoint("L1", (1, 4), level))
        ):
            table.weight.data = pruned
        with torch.no_grad():
            dense_s = np.median(time_runs(lambda: model(dense, sparse), dense.device, 2, repeats))
            coo_s = np.median(
                time_runs(lambda: coo_forward(model, dense, sparse), dense.device, 2, repeats)
            )
        rows.append(
            {
                "stage": f"forward L1 (1, 4) {level}",
                "unit": "s/batch",
                "lit_dlrm": dense_s,
                "reference": coo_s,
                "ratio": coo_s / dense_s,
                "note": "lit_dlrm = dense forward, reference = its COO path; ratio = COO / dense",
            }
        )
    for table, original in zip(model.emb_l, originals):
        table.weight.data = original
    return rows


def run(scale: str = "small", reference_rows: int = 200_000) -> list[dict]:
    """Both stages at ``scale``; rows for benchmarks/run.py's table."""
    test_rows = SCALES[scale][1]
    with tempfile.TemporaryDirectory() as tmp:
        write_arrays(Path(tmp), table_sizes(scale), test_rows)
        lit = run_child("lit", Path(tmp), test_rows, scale)
        ref = run_child("reference", Path(tmp), min(reference_rows, test_rows), scale)
    lit_rate, ref_rate = lit["rows"] / lit["seconds"], ref["rows"] / ref["seconds"]
    rows = [
        {
            "stage": "test loop (one grid point)",
            "unit": "samples/s",
            "lit_dlrm": lit_rate,
            "reference": ref_rate,
            "ratio": lit_rate / ref_rate,
            "lit_dlrm_peak_mib": lit["peak_mib"],
            "reference_peak_mib": ref["peak_mib"],
            "note": f"lit_dlrm over {lit['rows']:,} rows, reference-style loop over its first {ref['rows']:,}",
        }
    ]
    return rows + forward_rows(scale)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, directory, rows, scale = argv[1], argv[2], int(argv[3]), argv[4]
        torch.set_grad_enabled(True)
        result = (child_lit if kind == "lit" else child_reference)(
            directory, rows, table_sizes(scale)
        )
        result["peak_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--reference-rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    for row in run(args.scale, args.reference_rows):
        print(
            f"{row['stage']:<28} lit_dlrm {row['lit_dlrm']:>12.4g}  reference {row['reference']:>12.4g}  "
            f"ratio {row['ratio']:.2f}  ({row['unit']})"
        )


if __name__ == "__main__":
    main()
