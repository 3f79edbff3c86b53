"""Time to the first batch from each processed format, through `CriteoDataModule`.

Writes one synthetic data set (the scale's rows over 4 days, tables capped by the scale) in each
format's file layout: dlrm's Terabyte day .npz (np.savez_compressed), its MLPerf binary files,
TorchRec's per-day npy (raw and contiguous ids) and MLPerf's multi-hot npz (bags of 3 copies of
each id). Only the layout matters here; that each format's values are its tool's is
tests/test_formats.py's job. Then ``repeats`` times, the sources in ABBA order
(:mod:`benchmarks.harness`), in this process:
  cold: an empty cache directory: build the cache (dlrm_terabyte: decompress and convert) or the
        index (the others: read headers, nothing copied), setup, first shuffled train batch;
  warm: (after all cold runs) a fresh DataModule on a cache or index a cold run built: setup and
        first shuffled train batch.
Same work: every run of a source gives the same first batch, and every source the same labels
and ids (as written: contiguous ids less their offset, a bag's first id), i.e. the same train
rows in the same shuffled order; else :class:`benchmarks.harness.WorkMismatch`.

    python -m benchmarks.first_batch --scale small
    python -m benchmarks.run --scale small --only first_batch   # the same rows, in run_small_*.md
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    REPEATS,
    Sample,
    alternate,
    check_same_work,
    main_for,
    measured,
    single,
)

# scale: (rows, the synthetic set's table cap)
SCALES = {"tiny": (3_000, 200), "small": (400_000, 100_000), "kaggle": (2_000_000, 1_000_000)}
DAYS, BAG, BATCH_SIZE = 4, 3, 2048
CONTIGUOUS_OFFSET = 2  # TorchRec's contiguous ids: 0 and 1 unused


def write_formats(root: Path, rows: int, days: int, max_table_size: int, bag: int) -> dict:
    """Each format's files from one synthetic set; returns {source: (path, extra options)}."""
    from lit_dlrm.data import CriteoDataModule

    dm = CriteoDataModule(synthetic_rows=rows, max_table_size=max_table_size, cache_dir=root / "c")
    dm.setup()
    arrays = {k: np.load(dm.cache_path / f"{k}.npy") for k in ("dense", "sparse", "label")}
    cuts = np.linspace(0, rows, days + 1).astype(int)[1:-1]
    split = {k: np.split(a, cuts) for k, a in arrays.items()}
    counts = np.array(dm.table_sizes, np.int32)
    npz, binary, npy, mh = (root / n for n in ("npz", "bin", "npy", "mh"))
    for d in (npz, binary, npy, mh):
        d.mkdir()
    for d in (npz, binary):
        np.savez_compressed(d / "day_fea_count.npz", counts=counts)
    for i, (x, c, y) in enumerate(zip(split["dense"], split["sparse"], split["label"])):
        np.savez_compressed(npz / f"day_{i}_reordered.npz", X_int=x, X_cat=c, y=y)
        np.save(npy / f"day_{i}_dense.npy", np.log(x + 2, dtype=np.float32))
        np.save(npy / f"day_{i}_labels.npy", y.astype(np.int32).reshape(-1, 1))
        np.save(npy / f"day_{i}_sparse.npy", c.astype(np.int64))
        contig = c.astype(np.int64) + CONTIGUOUS_OFFSET
        np.save(npy / f"day_{i}_sparse_contig_freq.npy", contig)
        bags = {str(j): np.repeat(c[:, j : j + 1], bag, axis=1) for j in range(26)}
        np.savez(mh / f"day_{i}_sparse_multi_hot.npz", **bags)
        for part in ("dense", "labels"):
            shutil.copyfile(npy / f"day_{i}_{part}.npy", mh / f"day_{i}_{part}.npy")
    whole = np.concatenate([arrays["label"][:, None], arrays["dense"], arrays["sparse"]], 1)
    last = cuts[-1]
    mid = last + -(-(rows - last) // 2)
    for name, part in (("train", whole[:last]), ("test", whole[last:mid]), ("val", whole[mid:])):
        (binary / f"{name}_data.bin").write_bytes(part.astype(np.int32).tobytes())
    sizes = {"num_embeddings_per_feature": dm.table_sizes}
    return {
        "dlrm_terabyte": (npz / "day", {}),
        "dlrm_bin": (binary / "train_data.bin", {}),
        "torchrec_npy": (npy, sizes),
        "torchrec_npy_contiguous": (npy, {}),
        "torchrec_multihot": (mh, sizes),
    }


def fingerprint(source: str, batch) -> tuple[str, str]:
    """(labels and ids as written, the whole batch) of a first batch, as digests: the first is
    equal across formats, the second across runs of one format."""
    from lit_dlrm.bags import Bags

    dense, sparse, label = batch
    if isinstance(sparse, Bags):  # table after table, each row's bag of BAG copies
        ids = sparse.values.reshape(sparse.lengths.shape[0], -1, BAG)[..., 0].t()
        whole = (dense, sparse.values, sparse.lengths, label)
    else:
        ids = sparse - (CONTIGUOUS_OFFSET if source == "torchrec_npy_contiguous" else 0)
        whole = (dense, sparse, label)
    rows = hashlib.sha1()
    for t in (label.to(torch.int64), ids.to(torch.int64)):
        rows.update(t.contiguous().numpy().tobytes())
    batch_hash = hashlib.sha1()
    for t in whole:
        batch_hash.update(t.contiguous().numpy().tobytes())
    return rows.hexdigest(), batch_hash.hexdigest()


def first_batch(source: str, path: Path, options: dict, cache: Path) -> Sample:
    """Seconds (and extra peak) from a new DataModule to its first shuffled train batch."""
    from lit_dlrm.data import CriteoDataModule

    def load():
        dm = CriteoDataModule(
            source=source, path=str(path), cache_dir=str(cache), batch_size=BATCH_SIZE, **options
        )
        dm.prepare_data()
        dm.setup()
        return next(iter(dm.train_dataloader()))

    batch, seconds, peak = measured(load)
    return Sample(seconds, peak, fingerprint(source, batch))


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    """Cold and warm first-batch seconds of each source (lit_dlrm alone: no reference side)."""
    repeats = repeats or REPEATS[scale]
    rows, max_table_size = SCALES[scale]
    with tempfile.TemporaryDirectory(prefix="first-batch-") as tmp:
        root = Path(tmp)
        formats = write_formats(root, rows, DAYS, max_table_size, BAG)
        caches: dict[str, list[Path]] = {source: [] for source in formats}

        def cold(source: str):
            def one() -> Sample:
                cache = root / f"cache-{source}-{len(caches[source])}"
                caches[source].append(cache)
                return first_batch(source, *formats[source], cache)

            return one

        def warm(source: str):
            built = iter(caches[source])
            return lambda: first_batch(source, *formats[source], next(built))

        cold_runs = alternate({source: cold(source) for source in formats}, repeats)
        warm_runs = alternate({source: warm(source) for source in formats}, repeats)
    check_same_work(
        "first batch",
        {**cold_runs, **{f"{s} warm": r for s, r in warm_runs.items()}},
        same=lambda a, b: a[0] == b[0],
        what="the same labels and ids in every format (the same train rows, shuffled alike)",
    )
    table = []
    for source in formats:
        runs = {"cold": cold_runs[source], "warm": warm_runs[source]}
        check_same_work(f"first batch from {source}", runs, what="the same batch on every run")
        for kind, note in (
            ("cold", "empty cache directory: cache (dlrm_terabyte) or index built"),
            ("warm", "a fresh DataModule on the cache or index a cold run built"),
        ):
            table.append(
                single(
                    f"first batch from {source}, {kind}",
                    "s",
                    runs[kind],
                    note=f"{note}; {rows:,} rows over {DAYS} days, batch {BATCH_SIZE}",
                )
            )
    return table


def main(argv: list[str] | None = None) -> None:
    main_for("first_batch", run, argv, __doc__.splitlines()[0], sorted(SCALES))


if __name__ == "__main__":
    main()
