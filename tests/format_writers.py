"""Small writers of the processed Criteo formats, each following its tool's own source, for tests.

Input: raw rows as the text parser returns them (label uint8, dense int32 with missing -> 0 and
negatives kept, cat uint32 raw hashes with missing -> 0), already cut into days.
    write_dlrm_days        facebookresearch/dlrm data_utils.py: day_{i}_processed.npz (X_cat float64
                           transposed, X_int negatives -> 0, y), or the _reordered.npz of its
                           concatCriteoAdData (randomize "none": float64 copies in day order),
                           day_fea_count.npz, day_day_count.npz
    write_dlrm_bin         data_loader_terabyte.numpy_to_binary: int32 [y, X_int, X_cat] rows,
                           train = days but the last, test/val = the last day's halves (ceil)
    write_torchrec_npy     torchrec BinaryCriteoUtils.tsv_to_npys (+ sparse_to_contiguous)
    write_multihot         dlrm torchrec_dlrm materialize_synthetic_multihot_dataset (np.savez):
                           the library's writer (`formats.write_multihot_day`, which the synthetic
                           Terabyte generator uses); the tests check its bags against the one-hot
                           ids of `write_torchrec_npy`
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lit_dlrm.data.formats import torchrec_dense, write_multihot_day


def first_appearance_ids(days_cat: list[np.ndarray], start: int = 0) -> list[np.ndarray]:
    """Per column, raw value -> start, start + 1, ... in order of first appearance over the days
    in order, row by row (dlrm's convertDicts, TorchRec's sparse_to_contiguous)."""
    out = [np.zeros(c.shape, dtype=np.int64) for c in days_cat]
    for j in range(days_cat[0].shape[1]):
        seen: dict[int, int] = {}
        for d, cat in enumerate(days_cat):
            for k, x in enumerate(cat[:, j].tolist()):
                if x not in seen:
                    seen[x] = start + len(seen)
                out[d][k, j] = seen[x]
    return out


def write_dlrm_days(directory: Path, days, max_ind_range: int, reordered: bool) -> Path:
    """dlrm's Terabyte files under `directory`; returns its prefix (`directory / "day"`)."""
    directory.mkdir(parents=True, exist_ok=True)
    cats = [(c.astype(np.int64) % max_ind_range).astype(np.int32) for _, _, c in days]
    ids = first_appearance_ids(cats)
    counts = np.array([max(int(i[:, j].max()) for i in ids) + 1 for j in range(26)], np.int32)
    for d, ((y, x_int, _), x_cat) in enumerate(zip(days, ids)):
        x_int = x_int.astype(np.int32).copy()
        x_int[x_int < 0] = 0
        if reordered:  # intermediate np.zeros arrays (float64) copied in order
            np.savez_compressed(
                directory / f"day_{d}_reordered.npz",
                X_cat=x_cat.astype(np.float64),
                X_int=x_int.astype(np.float64),
                y=y.astype(np.float64),
            )
        else:
            x_cat_t = np.zeros((26, len(y)))
            x_cat_t[:] = x_cat.T
            np.savez_compressed(
                directory / f"day_{d}_processed.npz",
                X_cat=np.transpose(x_cat_t),
                X_int=x_int,
                y=y.astype(np.int32),
            )
    np.savez_compressed(directory / "day_fea_count.npz", counts=counts)
    np.savez_compressed(
        directory / "day_day_count.npz", total_per_file=np.array([len(d[0]) for d in days])
    )
    return directory / "day"


def write_dlrm_bin(directory: Path, prefix: Path) -> Path:
    """numpy_to_binary of the reordered day files of `prefix`; returns train_data.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    days = sorted(prefix.parent.glob(f"{prefix.name}_*_reordered.npz"))
    days.sort(key=lambda p: int(p.name.split("_")[1]))

    def rows(f):
        with np.load(f) as z:
            return np.concatenate([z["y"].reshape(-1, 1), z["X_int"], z["X_cat"]], 1).astype(
                np.int32
            )

    (directory / "train_data.bin").write_bytes(b"".join(rows(f).tobytes() for f in days[:-1]))
    last = rows(days[-1])
    mid = int(np.ceil(len(last) / 2.0))
    (directory / "test_data.bin").write_bytes(last[:mid].tobytes())
    (directory / "val_data.bin").write_bytes(last[mid:].tobytes())
    (directory / "day_fea_count.npz").write_bytes(
        (prefix.parent / "day_fea_count.npz").read_bytes()
    )
    return directory / "train_data.bin"


def write_torchrec_npy(directory: Path, days, contiguous: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    sparse = [c.astype(np.int64) for _, _, c in days]
    contig = first_appearance_ids(sparse, start=2) if contiguous else None
    for d, (y, x_int, _) in enumerate(days):
        np.save(directory / f"day_{d}_dense.npy", torchrec_dense(x_int))
        np.save(directory / f"day_{d}_labels.npy", y.astype(np.int32).reshape(-1, 1))
        np.save(directory / f"day_{d}_sparse.npy", sparse[d])
        if contiguous:
            np.save(directory / f"day_{d}_sparse_contig_freq.npy", contig[d])
    return directory


def write_multihot(directory: Path, days, tables: list[np.ndarray]) -> Path:
    """MLPerf's multi-hot set of the raw days (materialize_synthetic_multihot_dataset with
    --copy_labels_and_dense over tsv_to_npys' output)."""
    for d, (y, x_int, cat) in enumerate(days):
        write_multihot_day(directory, d, y, x_int, cat, tables)
    return directory
