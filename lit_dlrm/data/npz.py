"""Reading facebookresearch/dlrm's `kaggleAdDisplayChallenge_processed.npz` into the cache.

The file is read as dlrm's `data_utils.py` writes it (`np.savez_compressed`): `X_int` int32 (N, 13)
(negatives already 0), `X_cat` float64 (N, 26) ids in first-appearance order, stored in Fortran
order (dlrm saves a transpose), `y` int32 (N,) 0/1, `counts` int32 (26,) table sizes; other integer
or float dtypes and C order are read too. A C-ordered member is streamed out of the zip block by
block; a Fortran-ordered one is first decompressed once into a scratch file (its uncompressed
size, on the disk of `scratch_dir`, removed afterwards) and read from there in row blocks. Memory
is bounded by the block size either way; pickled objects are refused. Rows keep file order, so
the split is the Kaggle one. `max_ind_range` takes `id % max_ind_range` (table size
`min(count, max_ind_range)`); `min_frequency` maps rare ids to one shared id as for text input.
Malformed input raises `CriteoFormatError` naming the file, key and row.

dlrm's Terabyte day files (`day_{i}_reordered.npz`, else `day_{i}_processed.npz`, with the table
sizes in `day_fea_count.npz`; `cached_npz_days`) are read the same way, day after day, into one
cache whose days are the files and whose splits are dlrm's: every day but the last is train, the
last day's first ceil(n/2) rows test and the rest val.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .criteo import CriteoFormatError, ParsedBlock
from .kaggle import NUM_DENSE, NUM_SPARSE
from .preprocess import (
    PreprocessOptions,
    build_arrays,
    cache_key,
    ensure_cache,
    find_days,
    fingerprint_file,
    last_day_splits,
)

REQUIRED = ("X_int", "X_cat", "y", "counts")


def _open_member(zf: zipfile.ZipFile, key: str, name: str):
    """(stream positioned at the data, dtype, shape, fortran_order) of member `key` of `name`."""
    member = f"{key}.npy"
    if member not in zf.namelist():
        raise CriteoFormatError(
            f"{name}: no array {key!r} (has {sorted(n[:-4] for n in zf.namelist())}); "
            f"expected keys {REQUIRED}"
        )
    f = zf.open(member)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise CriteoFormatError(f"{name}: {key} holds Python objects; refusing to unpickle")
    return f, dtype, shape, fortran and len(shape) > 1


def _row_reader(
    f, dtype: np.dtype, shape: tuple, fortran: bool, stack: ExitStack, scratch_dir, what: str
) -> Callable[[int], np.ndarray]:
    """`read(m)`: the next m rows, (m, *shape[1:]), of the array whose data `f` streams.

    C order: the rows are consecutive bytes of the stream. Fortran order (N, W): the stream holds
    column after column, so it is copied once into an anonymous temporary file in `scratch_dir`
    (closed, and so removed, with `stack`) and each block reads its W column pieces from there.
    """
    n, row_shape = shape[0], tuple(shape[1:])
    width = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    if not fortran:

        def read(m: int) -> np.ndarray:
            buf = f.read(m * width)
            if len(buf) != m * width:
                raise CriteoFormatError(f"{what}: truncated array data")
            return np.frombuffer(buf, dtype=dtype).reshape((m, *row_shape))

        return read

    (cols,), size = row_shape, dtype.itemsize
    columns = stack.enter_context(tempfile.TemporaryFile(dir=scratch_dir))
    shutil.copyfileobj(f, columns, 1 << 24)
    if columns.tell() != n * cols * size:
        raise CriteoFormatError(
            f"{what}: truncated array data ({columns.tell()} of {n * cols * size} bytes)"
        )
    pos = 0

    def read_fortran(m: int) -> np.ndarray:
        nonlocal pos
        block = np.empty((m, cols), dtype=dtype)
        for j in range(cols):
            columns.seek((j * n + pos) * size)
            block[:, j] = np.frombuffer(columns.read(m * size), dtype=dtype)
        pos += m
        return block

    return read_fortran


def iter_npz_blocks(
    path: str | os.PathLike,
    scratch_dir: str | os.PathLike,
    rows_per_block: int = 1 << 18,
    counts: np.ndarray | None = None,
) -> Iterator[ParsedBlock]:
    """Blocks of (label, dense, ids) from a dlrm processed .npz, in file order; checks shapes,
    ids and labels. Fortran-ordered members are staged in temporary files in `scratch_dir`
    (removed when the generator finishes or is closed). `counts`: the table sizes, for the
    per-day files that do not hold them (Terabyte's `day_{i}_*.npz`; else read from the file)."""
    path = Path(path)
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CriteoFormatError(f"{name}: not an .npz (zip) archive: {e}") from e
    with ExitStack() as stack:
        stack.enter_context(zf)
        counts = _counts(zf, name) if counts is None else counts
        members = {k: _open_member(zf, k, name) for k in ("X_int", "X_cat", "y")}
        for f, *_ in members.values():
            stack.enter_context(f)
        shi, shc, shy = (members[k][2] for k in ("X_int", "X_cat", "y"))
        n = shy[0] if len(shy) == 1 else -1
        if shi != (n, NUM_DENSE) or shc != (n, NUM_SPARSE) or len(shy) != 1:
            raise CriteoFormatError(
                f"{name}: shapes X_int {shi}, X_cat {shc}, y {shy}; expected (N, 13), (N, 26), (N,)"
            )
        read_int, read_cat, read_y = (
            _row_reader(*members[k], stack, scratch_dir, f"{name}: {k}")
            for k in ("X_int", "X_cat", "y")
        )
        dti = members["X_int"][1]
        for start in range(0, n, rows_per_block):
            m = min(rows_per_block, n - start)
            dense, cat, y = read_int(m), read_cat(m), read_y(m)
            ids = cat.astype(np.int64)
            bad = (ids != cat) | (ids < 0) | (ids >= counts[None, :])
            if bad.any():
                r, j = np.argwhere(bad)[0]
                raise CriteoFormatError(
                    f"{name}: X_cat[{start + r}, {j}] = {cat[r, j]!r} is not an id "
                    f"in [0, counts[{j}]={counts[j]})"
                )
            if not np.isin(y, (0, 1)).all():
                r = int(np.flatnonzero(~np.isin(y, (0, 1)))[0])
                raise CriteoFormatError(f"{name}: y[{start + r}] = {y[r]!r}, expected 0 or 1")
            if dti.kind == "f" and not np.array_equal(dense, np.floor(dense)):
                raise CriteoFormatError(f"{name}: X_int holds non-integer values near row {start}")
            yield ParsedBlock(
                label=y.astype(np.uint8),
                dense=dense.astype(np.int64).astype(np.int32) if dti.kind == "f" else dense,
                cat=ids,
                first_line=start,
            )


def _counts(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    try:
        counts = np.load(zf.open("counts.npy"), allow_pickle=False)
    except (KeyError, ValueError, EOFError, OSError) as e:
        raise CriteoFormatError(
            f"{name}: cannot read 'counts' ({e}); expected keys {REQUIRED}"
        ) from e
    if counts.shape != (NUM_SPARSE,) or counts.dtype.kind not in "iu" or (counts < 1).any():
        raise CriteoFormatError(
            f"{name}: counts must be {NUM_SPARSE} positive table sizes, got shape {counts.shape}"
        )
    return counts.astype(np.int64)


def npz_counts(path: str | os.PathLike) -> np.ndarray:
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as zf:
            return _counts(zf, name)
    except zipfile.BadZipFile as e:
        raise CriteoFormatError(f"{name}: not an .npz (zip) archive: {e}") from e


def preprocess_npz(path: str | os.PathLike, out_dir: Path, options: PreprocessOptions) -> dict:
    counts = npz_counts(path)
    sizes = counts.tolist()
    if options.max_ind_range is not None:
        sizes = np.minimum(counts, options.max_ind_range).tolist()
    return build_arrays(iter_npz_blocks(path, out_dir), out_dir, options, given_ids=sizes)


def cached_npz(
    path: str | os.PathLike, cache_dir: str | os.PathLike, options: PreprocessOptions
) -> tuple[Path, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data.path: no such file: {path}")
    fp = fingerprint_file(path)
    opts = {"max_ind_range": options.max_ind_range, "min_frequency": options.min_frequency}
    key = cache_key("dlrm_npz", fp, opts)
    return ensure_cache(
        cache_dir,
        f"dlrm_npz-{path.name.split('.')[0]}-{key}",
        key,
        lambda tmp: preprocess_npz(path, tmp, options),
        {"source": "dlrm_npz", "input": {**fp, "path": str(path)}, "options": opts},
    )


# ----------------------------------------------------------------------------------------------
# facebookresearch/dlrm's Terabyte day files


def dlrm_day_files(prefix: str | os.PathLike) -> tuple[list[Path], Path]:
    """dlrm's per-day files of `prefix` (its `--raw-data-file`, e.g. `.../day`) and its table
    sizes `{prefix}_fea_count.npz`. The days are `{prefix}_{i}_reordered.npz` (what its loaders
    read) when day 0 has one, else `{prefix}_{i}_processed.npz`, from day 0 up to the first
    missing."""
    prefix = Path(prefix)
    kind = (
        "reordered" if prefix.with_name(f"{prefix.name}_0_reordered.npz").is_file() else "processed"
    )
    days = find_days(prefix.parent, f"{prefix.name}_{{}}_{kind}.npz")
    counts = prefix.with_name(f"{prefix.name}_fea_count.npz")
    if not counts.is_file():
        raise FileNotFoundError(f"--data.path: dlrm's table sizes {counts} are missing")
    return days, counts


def preprocess_npz_days(
    days: list[Path], counts_file: Path, out_dir: Path, options: PreprocessOptions
) -> dict:
    """Day files in order into `out_dir`, as for one .npz; days and splits are Terabyte's."""
    with np.load(counts_file) as z:
        counts = np.asarray(z["counts"])
    if counts.shape != (NUM_SPARSE,) or counts.dtype.kind not in "iu" or (counts < 1).any():
        raise CriteoFormatError(f"{counts_file.name}: expected 26 positive table sizes in 'counts'")
    counts = counts.astype(np.int64)
    day_rows = []

    def blocks():
        for day in days:
            day_rows.append(0)
            for block in iter_npz_blocks(day, out_dir, counts=counts):
                day_rows[-1] += len(block)
                yield block

    sizes = counts if options.max_ind_range is None else np.minimum(counts, options.max_ind_range)
    meta = build_arrays(blocks(), out_dir, options, given_ids=sizes.tolist())
    meta["days"] = np.cumsum([0, *day_rows]).tolist()
    meta["splits"] = last_day_splits(day_rows, first_half="test")
    return meta


def cached_npz_days(
    prefix: str | os.PathLike, cache_dir: str | os.PathLike, options: PreprocessOptions
) -> tuple[Path, dict]:
    """(directory, meta) of the cache of dlrm's Terabyte day files of `prefix`."""
    days, counts = dlrm_day_files(prefix)
    fps = [fingerprint_file(p) for p in [*days, counts]]
    opts = {"max_ind_range": options.max_ind_range, "min_frequency": options.min_frequency}
    key = cache_key("dlrm_terabyte", {"files": fps}, opts)
    return ensure_cache(
        cache_dir,
        f"dlrm_terabyte-{Path(prefix).name}-{key}",
        key,
        lambda tmp: preprocess_npz_days(days, counts, tmp, options),
        {"source": "dlrm_terabyte", "input": {"path": str(prefix), "files": fps}, "options": opts},
    )
