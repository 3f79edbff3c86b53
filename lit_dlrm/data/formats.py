"""Processed Criteo formats read where they lie (memory-mapped, nothing copied), one source each.

    dlrm_bin                 facebookresearch/dlrm's MLPerf binary (`--mlperf-bin-loader`): one
                             file per split, int32 rows [y, X_int(13), X_cat(26)] (its
                             `numpy_to_binary`), and the `*_fea_count.npz` table sizes
    torchrec_npy             TorchRec's `day_{i}_{dense,sparse,labels}.npy` (`npy_preproc_criteo`)
    torchrec_npy_contiguous  the same with `day_{i}_sparse_contig_freq.npy` (`contiguous_preproc`)
    torchrec_multihot        MLPerf DLRM-DCNv2's multi-hot set: `day_{i}_sparse_multi_hot.npz`
                             (`materialize_synthetic_multihot_dataset`, uncompressed, one member
                             "j.npy" int32 (n, bag size j) per feature) beside TorchRec's
                             dense and labels
(dlrm's per-day `.npz` are compressed, so they cannot be mapped: `lit_dlrm.data.npz` converts them.)

Each format's own transform, as its loader applies it, so batches equal what that tool feeds its
model from the same rows:
    dlrm_bin     dense log(x + 1) of the stored integers (as `data_loader_terabyte`; stored values
                 are already >= 0), ids as stored (% `max_ind_range` when given, as dlrm does);
                 these equal the raw text path's batches on the same rows
    torchrec_*   dense as stored: TorchRec's float32 log(x - m + 2), m the smallest dense value of
                 the day file, missing -> 0 (not dlrm's log(max(x, 0) + 1): TorchRec's model sees
                 these values too); raw hashes (`torchrec_npy`) reduced at load as its
                 `hashes=` does, id % `num_embeddings_per_feature[j]` (or % `max_ind_range`, one
                 of the two is required); contiguous and multi-hot ids used as stored (table
                 sizes: `num_embeddings_per_feature`, or max id + 1 found by one pass over the
                 sparse files when the index is built)
Splits, as each tool makes them: the last day (day 23 of Terabyte) is split in two halves, the
first ceil(n/2) rows are dlrm's test and TorchRec's val, the rest dlrm's val and TorchRec's test;
every earlier day is train. dlrm_bin's splits are its three files.

The "cache" of these sources is an index: meta.json naming the files, byte offsets, shapes and
the splits (built by `ensure_cache`, so atomic and keyed on the files' fingerprints).
`FileBatches` reads batches through it. Errors name the file and what was expected.

Writing (for the synthetic Terabyte generator, `terabyte.write_days`): `write_multihot_day` writes
one day of MLPerf's multi-hot set from raw rows by the tools' rules: TorchRec's `tsv_to_npys`
dense and labels (`torchrec_dense`), and `materialize_synthetic_multihot_dataset`'s bags, looked
up in MLPerf's one-hot -> multi-hot tables (`multihot_tables`, `multihot_bags`).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bags import Bags
from ..paths import atomic_write
from .criteo import CriteoFormatError
from .datamodule import dense_features
from .kaggle import NUM_DENSE, NUM_SPARSE
from .preprocess import (
    PreprocessOptions,
    cache_key,
    ensure_cache,
    find_days,
    fingerprint_file,
    last_day_splits,
)

IN_PLACE = ("dlrm_bin", "torchrec_npy", "torchrec_npy_contiguous", "torchrec_multihot")
_SPARSE_FILE = {
    "torchrec_npy": "day_{}_sparse.npy",
    "torchrec_npy_contiguous": "day_{}_sparse_contig_freq.npy",
    "torchrec_multihot": "day_{}_sparse_multi_hot.npz",
}


# ----------------------------------------------------------------------------------------------
# array references: (file, byte offset, dtype, shape[, columns]) -> a read-only memory map


def _npy_ref(path: Path, f=None, offset: int = 0) -> dict:
    """Reference to the array of the .npy at `offset` of `path` (read from `f` when given)."""
    own = f is None
    f = open(path, "rb") if own else f
    try:
        f.seek(offset)
        try:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise CriteoFormatError(f"{path.name}: not a .npy array at byte {offset}: {e}") from e
        data = f.tell()
    finally:
        if own:
            f.close()
    if dtype.hasobject or (fortran and len(shape) > 1):
        raise CriteoFormatError(
            f"{path.name}: expected a C-ordered numeric array, got dtype {dtype}, "
            f"fortran_order={fortran}"
        )
    return {"file": str(path), "offset": data, "dtype": dtype.str, "shape": list(shape)}


def _npz_refs(path: Path) -> dict[str, dict]:
    """References to every member of an uncompressed .npz (np.savez), by member name."""
    refs = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CriteoFormatError(
                    f"{path.name}: member {info.filename} is compressed, so it cannot be mapped "
                    "(expected np.savez output, not np.savez_compressed)"
                )
            f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            refs[info.filename] = _npy_ref(path, f, info.header_offset + 30 + name_len + extra_len)
    return refs


def _open(ref: dict) -> np.ndarray:
    a = np.memmap(ref["file"], np.dtype(ref["dtype"]), "r", ref["offset"], tuple(ref["shape"]))
    if "columns" in ref:
        a = a[:, ref["columns"][0] : ref["columns"][1]]
    return a


def _check_rows(refs: dict[str, dict], n: int, where: str) -> None:
    for name, ref in refs.items():
        if ref["shape"][0] != n:
            raise CriteoFormatError(
                f"{Path(ref['file']).name}: {ref['shape'][0]} rows ({name}), expected {n} ({where})"
            )


# ----------------------------------------------------------------------------------------------
# the index of each format


def _bin_file(train: Path, split: str) -> Path:
    """dlrm's binary file of `split` beside its train file (the last "train" in the name)."""
    cut = train.name.rindex("train")
    return train.with_name(train.name[:cut] + split + train.name[cut + len("train") :])


def _index_dlrm_bin(path: Path, options: PreprocessOptions) -> dict:
    """Parts train, test, val of dlrm's binary files; table sizes from `*_fea_count.npz`."""
    if "train" not in path.name:
        raise ValueError(
            f"--data.path: expected dlrm's train file (train_data.bin or *_train.bin), got {path}"
        )
    counts_files = sorted(path.parent.glob("*fea_count.npz"))
    if len(counts_files) != 1:
        raise FileNotFoundError(
            f"--data.path: expected one *_fea_count.npz (dlrm's table sizes) beside {path.name}, "
            f"found {[p.name for p in counts_files]}"
        )
    with np.load(counts_files[0]) as z:
        counts = np.asarray(z["counts"], dtype=np.int64)
    if counts.shape != (NUM_SPARSE,) or (counts < 1).any():
        raise CriteoFormatError(
            f"{counts_files[0].name}: expected 26 positive counts, got {counts}"
        )
    width = 1 + NUM_DENSE + NUM_SPARSE
    parts, rows = [], {}
    for split in ("train", "test", "val"):
        file = _bin_file(path, split)
        if not file.is_file():
            raise FileNotFoundError(f"--data.path: dlrm's {split} file {file} is missing")
        size = file.stat().st_size
        if size % (4 * width):
            raise CriteoFormatError(
                f"{file.name}: {size} bytes is not a whole number of {width}-int32 rows"
            )
        n = size // (4 * width)
        whole = {"file": str(file), "offset": 0, "dtype": "<i4", "shape": [n, width]}
        parts.append(
            {
                "rows": n,
                "label": {**whole, "columns": [0, 1]},
                "dense": {**whole, "columns": [1, 1 + NUM_DENSE]},
                "sparse": {**whole, "columns": [1 + NUM_DENSE, width]},
            }
        )
        rows[split] = n
    sizes = counts if options.max_ind_range is None else np.minimum(counts, options.max_ind_range)
    return {
        "parts": parts,
        "splits": {
            "train": [0, rows["train"]],
            "test": [rows["train"], rows["train"] + rows["test"]],
            "val": [rows["train"] + rows["test"], sum(rows.values())],
        },
        "table_sizes": sizes.tolist(),
        "modulus": None if options.max_ind_range is None else [options.max_ind_range] * NUM_SPARSE,
        "dense": "log1p",
        "counts_file": str(counts_files[0]),
    }


def _index_torchrec(
    source: str, directory: Path, options: PreprocessOptions, num_embeddings: list[int] | None
) -> dict:
    sparse_files = find_days(directory, _SPARSE_FILE[source])
    parts = []
    for day, sparse_file in enumerate(sparse_files):
        part = {}
        for kind in ("dense", "labels"):
            f = directory / f"day_{day}_{kind}.npy"
            if not f.is_file():
                raise FileNotFoundError(
                    f"--data.path: {f.name} is missing beside {sparse_file.name}"
                )
            part["dense" if kind == "dense" else "label"] = _npy_ref(f)
        n = part["dense"]["shape"][0]
        if part["dense"]["shape"] != [n, NUM_DENSE] or part["dense"]["dtype"] != "<f4":
            raise CriteoFormatError(
                f"day_{day}_dense.npy: expected float32 (n, 13), got {part['dense']}"
            )
        if source == "torchrec_multihot":
            members = _npz_refs(sparse_file)
            names = [f"{j}.npy" for j in range(NUM_SPARSE)]
            if sorted(members) != sorted(names):
                raise CriteoFormatError(
                    f"{sparse_file.name}: expected members 0.npy .. 25.npy, got {sorted(members)}"
                )
            bags = [members[m] for m in names]
            for m, ref in zip(names, bags):
                if len(ref["shape"]) != 2 or np.dtype(ref["dtype"]).kind not in "iu":
                    raise CriteoFormatError(
                        f"{sparse_file.name}: {m} must be integer (n, bag size)"
                    )
            part["bags"] = bags
            _check_rows(
                {**{m: r for m, r in zip(names, bags)}, "labels": part["label"]},
                n,
                f"as in day_{day}_dense.npy",
            )
        else:
            part["sparse"] = _npy_ref(sparse_file)
            if part["sparse"]["shape"][1:] != [NUM_SPARSE]:
                raise CriteoFormatError(
                    f"{sparse_file.name}: expected (n, 26), got {part['sparse']['shape']}"
                )
            _check_rows(
                {"sparse": part["sparse"], "labels": part["label"]}, n, f"as in day_{day}_dense.npy"
            )
        part["rows"] = n
        parts.append(part)
    if num_embeddings is not None:
        sizes = list(num_embeddings)
    elif source == "torchrec_npy":
        if options.max_ind_range is None:
            raise ValueError(
                "data.num_embeddings_per_feature: torchrec_npy holds raw 32-bit hashes; give the "
                "table sizes they are reduced to (or --data.max_ind_range for all features)"
            )
        sizes = [options.max_ind_range] * NUM_SPARSE
    else:
        sizes = _max_ids(parts) + 1
    modulus = sizes if source == "torchrec_npy" else None
    return {
        "parts": parts,
        "splits": last_day_splits([p["rows"] for p in parts], first_half="val"),
        "table_sizes": [int(s) for s in sizes],
        "modulus": modulus,
        "dense": "as_stored",
    }


def _max_ids(parts: list[dict], rows_per_block: int = 1 << 20) -> np.ndarray:
    """Largest id of each feature over every part (one pass, block by block); negative ids are
    refused, naming the file."""
    top = np.zeros(NUM_SPARSE, dtype=np.int64)
    for part in parts:
        refs = part["bags"] if "bags" in part else [part["sparse"]] * NUM_SPARSE
        columns = [(j, ref, _open(ref)) for j, ref in enumerate(refs)]
        for s in range(0, part["rows"], rows_per_block):
            for j, ref, a in columns:
                block = (
                    a[s : s + rows_per_block] if "bags" in part else a[s : s + rows_per_block, j]
                )
                if block.size and block.min() < 0:
                    raise CriteoFormatError(
                        f"{Path(ref['file']).name}: negative id in feature {j}, rows {s}.."
                    )
                top[j] = max(top[j], int(block.max()) if block.size else 0)
    return top


def cached_index(
    source: str,
    path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    options: PreprocessOptions,
    num_embeddings: list[int] | None = None,
) -> tuple[Path, dict]:
    """(directory, meta) of the index of `path` in format `source` (one of IN_PLACE)."""
    if source not in IN_PLACE:
        raise ValueError(f"data.source: expected one of {IN_PLACE} here, got {source!r}")
    path = Path(path)
    if source == "dlrm_bin":
        if not path.is_file():
            raise FileNotFoundError(f"--data.path: no such file: {path}")
        build = lambda: _index_dlrm_bin(path, options)  # noqa: E731
        splits = [_bin_file(path, k) for k in ("test", "val")] if "train" in path.name else []
        inputs = [path, *(p for p in splits if p.is_file()), *path.parent.glob("*fea_count.npz")]
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"--data.path: {source} needs a directory of day files: {path}")
        build = lambda: _index_torchrec(source, path, options, num_embeddings)  # noqa: E731
        inputs = []
        for day, sparse in enumerate(find_days(path, _SPARSE_FILE[source])):
            beside = [path / f"day_{day}_{kind}.npy" for kind in ("dense", "labels")]
            inputs += [sparse, *(p for p in beside if p.is_file())]
    fps = [fingerprint_file(p) for p in inputs]
    opts = {"max_ind_range": options.max_ind_range, "num_embeddings_per_feature": num_embeddings}
    key = cache_key(source, {"files": fps}, opts)

    def index(tmp: Path) -> dict:
        meta = build()
        n = sum(p["rows"] for p in meta["parts"])
        meta.update(rows=n, has_label=True, num_dense=NUM_DENSE, num_sparse=NUM_SPARSE)
        meta["days"] = np.cumsum([0, *(p["rows"] for p in meta["parts"])]).tolist()
        return meta

    return ensure_cache(
        cache_dir,
        f"{source}-{path.name.split('.')[0]}-{key}",
        key,
        index,
        {"source": source, "input": {"path": str(path), "files": fps}, "options": opts},
    )


# ----------------------------------------------------------------------------------------------
# batches


class FileBatches(Dataset):
    """Whole batches read through an index's meta: rows -> (dense, sparse or Bags, label).

    `index` is a (start, stop) pair or a sorted int64 array of global row numbers (parts in
    order). dense float32 (B, 13), sparse int64 (B, 26) or `Bags` (multi-hot), label float32 (B,).
    Picklable: the memory maps are opened lazily in each process.
    """

    def __init__(self, meta: dict):
        self.meta = meta
        self.bounds = np.cumsum([0, *(p["rows"] for p in meta["parts"])])
        self.modulus = (
            None if meta.get("modulus") is None else np.asarray(meta["modulus"], np.int64)
        )
        self._parts = None

    def __getstate__(self):
        return {**self.__dict__, "_parts": None}

    def _open(self) -> list[dict]:
        if self._parts is None:
            self._parts = []
            for p in self.meta["parts"]:
                opened = {k: _open(p[k]) for k in ("dense", "label", "sparse") if k in p}
                if "bags" in p:
                    opened["bags"] = [_open(r) for r in p["bags"]]
                self._parts.append(opened)
        return self._parts

    def _pieces(self, index) -> list[tuple[int, object]]:
        """(part, local rows: a slice or an array) covering `index`, in order."""
        b = self.bounds
        if isinstance(index, tuple):
            lo, hi = int(index[0]), int(index[1])
            out = []
            for k in range(np.searchsorted(b, lo, "right") - 1, len(b) - 1):
                if b[k] >= hi:
                    break
                out.append((k, slice(max(lo, b[k]) - b[k], min(hi, b[k + 1]) - b[k])))
            return out
        index = np.asarray(index, dtype=np.int64)
        part = np.searchsorted(b, index, "right") - 1
        cuts = np.flatnonzero(np.diff(part)) + 1
        groups = np.split(np.arange(len(index)), cuts)
        return [(int(part[g[0]]), index[g] - b[part[g[0]]]) for g in groups if len(g)]

    def __getitem__(self, index):
        parts = self._open()
        pieces = self._pieces(index)
        cat = lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs)  # noqa: E731
        dense = cat([np.asarray(parts[k]["dense"][r]) for k, r in pieces])
        label = cat([np.asarray(parts[k]["label"][r]).reshape(-1) for k, r in pieces])
        if self.meta["dense"] == "log1p":
            dense_t = dense_features(np.maximum(dense, 0))
        else:
            dense_t = torch.from_numpy(np.array(dense, dtype=np.float32))
        label_t = torch.from_numpy(label.astype(np.float32))
        if "bags" in parts[0]:
            per_table = [
                cat([np.asarray(parts[k]["bags"][j][r]) for k, r in pieces])
                for j in range(NUM_SPARSE)
            ]
            b = len(dense)
            values = np.concatenate([t.reshape(-1) for t in per_table]).astype(np.int64)
            lengths = np.repeat(np.array([t.shape[1] for t in per_table], np.int64)[:, None], b, 1)
            return dense_t, Bags(torch.from_numpy(values), torch.from_numpy(lengths)), label_t
        sparse = cat([np.asarray(parts[k]["sparse"][r]) for k, r in pieces]).astype(np.int64)
        if self.modulus is not None:
            sparse %= self.modulus
        return dense_t, torch.from_numpy(sparse), label_t


# ----------------------------------------------------------------------------------------------
# writing MLPerf's multi-hot set (TorchRec's dense and labels beside it)

# MLPerf DLRM-DCNv2's bag sizes of C1..C26 (the --multi_hot_sizes of its materialisation script).
# fmt: off
MLPERF_MULTI_HOT_SIZES = (
    3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1,
)
# fmt: on


def torchrec_dense(dense: np.ndarray) -> np.ndarray:
    """TorchRec `tsv_to_npys`' dense values of one day file: raw counts int (n, 13) as the text
    parser gives them (missing 0, negatives kept) -> float32 log(x - m + 2), m the smallest value
    of the whole array."""
    d = np.asarray(dense, dtype=np.int32).copy()
    d -= d.min() - 2
    return np.log(d, dtype=np.float32)


def multihot_tables(num_embeddings: list[int], sizes: list[int]) -> list[np.ndarray]:
    """MLPerf's one-hot -> multi-hot lookup tables (its `Multihot`, "uniform"): per feature j an
    int32 (num_embeddings[j], sizes[j]) table whose column 0 is the id itself (so a bag of size 1
    is the one-hot id) and whose other columns are ids drawn uniformly from [0, num_embeddings[j]),
    feature after feature from one `RandomState(0)`: the draws of its `np.random.seed(0)` and
    `np.random.randint`. Memory: 4 bytes x sum of num_embeddings[j] x sizes[j].

    Raises ValueError when the lengths differ or a size or table size is < 1.
    """
    if len(num_embeddings) != len(sizes):
        raise ValueError(
            f"multi-hot sizes: expected one per table ({len(num_embeddings)}), got {len(sizes)}"
        )
    if min(sizes, default=1) < 1 or min(num_embeddings, default=1) < 1:
        raise ValueError(
            f"multi-hot sizes and table sizes must be >= 1, got sizes {list(sizes)} "
            f"and table sizes {list(num_embeddings)}"
        )
    rng = np.random.RandomState(0)
    tables = []
    for n, s in zip(num_embeddings, sizes):
        ids = np.arange(n)[:, None]
        drawn = rng.randint(0, n, size=(n, s - 1))
        tables.append(np.concatenate([ids, drawn], axis=1).astype(np.int32))
    return tables


def multihot_bags(sparse: np.ndarray, tables: list[np.ndarray]) -> dict[str, np.ndarray]:
    """`materialize_synthetic_multihot_dataset`'s lookup: member str(j) = tables[j][sparse[:, j] %
    len(tables[j])], int32 (n, bag size j); sparse: raw ids or hashes, int (n, len(tables))."""
    sparse = np.asarray(sparse)
    return {str(j): t[sparse[:, j].astype(np.int64) % len(t)] for j, t in enumerate(tables)}


def write_multihot_day(
    directory: str | os.PathLike,
    day: int,
    label: np.ndarray,
    dense: np.ndarray,
    sparse: np.ndarray,
    tables: list[np.ndarray],
) -> list[Path]:
    """One day of MLPerf's multi-hot set from raw rows (label (n,), dense int (n, 13) with missing
    0, sparse raw hashes (n, 26)): `day_{day}_dense.npy` (`torchrec_dense`), `day_{day}_labels.npy`
    (int32 (n, 1)), then `day_{day}_sparse_multi_hot.npz` (np.savez, uncompressed, of
    `multihot_bags`), as TorchRec's and MLPerf's scripts write them. Each file appears whole or not
    at all, the npz last, so a day that `torchrec_multihot` finds is complete. Returns the paths."""
    directory = Path(directory)
    arrays = {
        f"day_{day}_dense.npy": torchrec_dense(dense),
        f"day_{day}_labels.npy": np.asarray(label, dtype=np.int32).reshape(-1, 1),
        f"day_{day}_sparse_multi_hot.npz": multihot_bags(sparse, tables),
    }
    paths = []
    for name, a in arrays.items():

        def write(tmp: Path, a=a) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy adds no suffix
                if isinstance(a, dict):
                    np.savez(f, **a)
                else:
                    np.save(f, a)

        atomic_write(directory / name, write)
        paths.append(directory / name)
    return paths
