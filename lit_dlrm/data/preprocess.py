"""Streaming preprocessing into the cache: raw row blocks in, memory-mapped arrays + meta.json out.

Every source hands blocks of raw rows to `build_arrays`:
    label: uint8 (n,) or None     dense: int (n, 13) raw integers     cat: uint32 (n, 26) raw hashes
The rules are facebookresearch/dlrm's `data_utils.py` (`getCriteoAdData`, `processCriteoAdData`):
missing -> 0, negative dense -> 0 (`log(x + 1)` is applied when batches are built); categorical ids
per feature in order of first appearance over the whole file; optional `max_ind_range` (raw hash
modulo it first) and `min_frequency` (rarer values share one id, placed where the first of them
appeared); 7 days by divmod, days 0-5 train, day 6 split into test (first half) and val.

Cache layout, one directory per (source, input fingerprint, options):
    dense.npy  int32 (N, 13)   clipped raw integers
    sparse.npy int32 (N, 26)   ids, 0 <= id < table_sizes[j]
    label.npy  uint8 (N,)      0/1 (absent for unlabelled Kaggle test files)
    prob.npy   float32 (N,)    synthetic only: the planted teacher's click probability
    vocab.npz                  raw value -> id of each feature (not for dlrm's .npz: ids given)
    meta.json                  table_sizes, splits, options, input fingerprint, counts, ...
A directory carries its final name only once complete (`ensure_cache`), so an interrupted build
never looks complete; a rerun with the same key reuses it. Memory: bounded by the block size plus
one sorted key array per feature.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..paths import naming_no_space, write_json
from .kaggle import NUM_DAYS, NUM_DENSE, NUM_SPARSE

log = logging.getLogger("lit_dlrm.data")

FORMAT_VERSION = 1
META = "meta.json"
VOCABULARY = "vocab.npz"  # per feature j: keys{j} (sorted raw values) and ids{j}


@dataclass(frozen=True)
class PreprocessOptions:
    """Options that change the cached arrays (and so are part of the cache key)."""

    max_ind_range: int | None = None  # hash raw categorical values modulo this first
    min_frequency: int = 1  # values seen fewer times share one id per feature
    on_bad_line: str = "error"  # "error" | "skip" (text input only)

    def __post_init__(self):
        if self.max_ind_range is not None and self.max_ind_range < 1:
            raise ValueError(
                f"data.max_ind_range: expected a positive integer or None, got {self.max_ind_range}"
            )
        if self.min_frequency < 1:
            raise ValueError(
                f"data.min_frequency: expected an integer >= 1, got {self.min_frequency}"
            )
        if self.on_bad_line not in ("error", "skip"):
            raise ValueError(
                f"data.on_bad_line: expected 'error' or 'skip', got {self.on_bad_line!r}"
            )


# ----------------------------------------------------------------------------------------------
# splits


def day_boundaries(n: int, days: int = NUM_DAYS) -> list[int]:
    """Row offsets of the `days` consecutive days: the first `n % days` days get one extra row."""
    per, extra = divmod(n, days)
    sizes = [per + (1 if d < extra else 0) for d in range(days)]
    return [0] + np.cumsum(sizes).tolist()


def split_ranges(n: int) -> dict[str, list[int]]:
    """[start, end) of train (days 0-5), test (first half of day 6), val (second half)."""
    b = day_boundaries(n)
    day6 = b[-1] - b[-2]
    mid = b[-2] + (day6 + 1) // 2  # np.array_split(.., 2): the first part takes the extra row
    return {"train": [0, b[-2]], "test": [b[-2], mid], "val": [mid, n]}


def last_day_splits(day_rows: list[int], first_half: str) -> dict[str, list[int]]:
    """[start, end) of train (every day but the last) and of the last day's two halves (Terabyte:
    days 0-22 and day 23). The first ceil(n / 2) rows of the last day are `first_half` ("test":
    facebookresearch/dlrm's rule; "val": TorchRec's), the rest the other split."""
    if first_half not in ("test", "val") or len(day_rows) < 2:
        raise ValueError(
            f"expected first_half 'test' or 'val' and at least 2 days (train days, then the "
            f"split day), got {first_half!r} and {len(day_rows)} day(s)"
        )
    bounds = np.cumsum([0, *day_rows]).tolist()
    start, end = bounds[-2], bounds[-1]
    mid = start + -(-(end - start) // 2)
    second = "val" if first_half == "test" else "test"
    return {"train": [0, start], first_half: [start, mid], second: [mid, end]}


def find_days(directory: Path, pattern: str) -> list[Path]:
    """The files `pattern.format(0)`, `pattern.format(1)`, ... in `directory`, up to the first
    one missing (FileNotFoundError naming --data.path when there is none)."""
    files = []
    while (Path(directory) / pattern.format(len(files))).is_file():
        files.append(Path(directory) / pattern.format(len(files)))
    if not files:
        raise FileNotFoundError(f"--data.path: no {pattern.format(0)} in {directory}")
    return files


# ----------------------------------------------------------------------------------------------
# appendable .npy files


class NpyAppender:
    """Write a C-order .npy file block by block; the final shape goes into the header at the end.

    The header is given a fixed 128 bytes (numpy's own alignment), so it can be rewritten in place.
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape, self.rows = Path(path), np.dtype(dtype), row_shape, 0
        self.f = open(self.path, "wb")
        self.f.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        d = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, *self.row_shape),
        }
        text = repr(d).encode("latin1")
        room = self.HEADER_BYTES - 10 - 1
        if len(text) > room:
            raise ValueError("npy header too long")
        text = text + b" " * (room - len(text)) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.row_shape, (block.shape, self.row_shape)
        self.f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self._header(self.rows))
        self.f.close()


# ----------------------------------------------------------------------------------------------
# first-appearance ids


class IdAssigner:
    """raw value -> id in order of first appearance, for one feature, across blocks.

    Known values live in two sorted key arrays, a large one and a small one of recent values that
    is merged into the large one when it reaches an eighth of it: a block's new values cost a copy
    of the small array, not of the whole vocabulary, so a feature of tens of millions of values
    streams in O(n log n). A block's values are factorised with pandas (hash based, appearance
    order), so new values get the next ids in the order they appear. ``keys`` / ``ids``: the
    sorted raw values and their ids; ``counts``: occurrences per id (with ``count``).
    """

    MIN_MERGE = 1 << 16  # the recent array is merged once it holds this many values (or more)

    def __init__(self, count: bool = True):
        self.count = count  # keep occurrence counts (needed for min_frequency)
        self._keys = np.zeros(0, dtype=np.uint32)  # sorted raw values, merged
        self._ids = np.zeros(0, dtype=np.int64)
        self._recent_keys = np.zeros(0, dtype=np.uint32)  # sorted raw values, recent
        self._recent_ids = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)  # capacity >= size
        self.size = 0

    @property
    def keys(self) -> np.ndarray:
        self._merge()
        return self._keys

    @property
    def ids(self) -> np.ndarray:
        self._merge()
        return self._ids

    @property
    def counts(self) -> np.ndarray:
        """Occurrences per id (size,)."""
        self._grow(self.size)
        return self._counts[: self.size]

    def add_counts(self, ids: np.ndarray, size: int) -> None:
        """Count ids given by the input itself (dlrm's .npz): ``size`` ids in all."""
        self.size = size
        self._grow(size)
        self._counts[:size] += np.bincount(ids, minlength=size)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        codes, uniq = pd.factorize(raw)  # uniq in order of appearance in this block
        uid = np.full(len(uniq), -1, dtype=np.int64)
        for keys, ids in ((self._keys, self._ids), (self._recent_keys, self._recent_ids)):
            if len(keys):
                pos = np.minimum(np.searchsorted(keys, uniq), len(keys) - 1)
                hit = keys[pos] == uniq
                uid[hit] = ids[pos[hit]]
        new = np.flatnonzero(uid < 0)
        if len(new):
            uid[new] = self.size + np.arange(len(new))
            self.size += len(new)
            self._recent_keys, self._recent_ids = _sorted_union(
                self._recent_keys, self._recent_ids, uniq[new], uid[new]
            )
            if len(self._recent_keys) >= max(self.MIN_MERGE, len(self._keys) // 8):
                self._merge()
        out = uid[codes]
        if self.count:
            self._grow(self.size)
            self._counts[uid] += np.bincount(codes, minlength=len(uniq))  # uid: distinct
        return out

    def _merge(self) -> None:
        if len(self._recent_keys):
            self._keys, self._ids = _sorted_union(
                self._keys, self._ids, self._recent_keys, self._recent_ids
            )
            self._recent_keys = self._recent_keys[:0]
            self._recent_ids = self._recent_ids[:0]

    def _grow(self, size: int) -> None:
        if len(self._counts) < size:  # doubling: amortised O(1) per id
            grown = np.zeros(max(size, 2 * len(self._counts)), dtype=np.int64)
            grown[: len(self._counts)] = self._counts
            self._counts = grown


def _sorted_union(keys, ids, new_keys, new_ids):
    """Sorted (keys, ids) with the disjoint (new_keys, new_ids) inserted in key order."""
    order = np.argsort(new_keys, kind="stable")
    new_keys, new_ids = new_keys[order], new_ids[order]
    at = np.searchsorted(keys, new_keys)
    return np.insert(keys, at, new_keys), np.insert(ids, at, new_ids)


def rare_remap(counts: np.ndarray, min_frequency: int) -> np.ndarray:
    """old id -> new id when values seen < min_frequency times share one id (first-appearance).

    Old ids are in first-appearance order, so treating every rare id as the first rare id and
    renumbering the distinct results in order gives first-appearance order with one shared id.
    """
    rare = counts < min_frequency
    key = np.arange(len(counts))
    if rare.any():
        key[rare] = np.flatnonzero(rare)[0]
    _, new = np.unique(key, return_inverse=True)
    return new.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# the core: raw blocks -> arrays


def build_arrays(
    blocks: Iterable,
    out_dir: Path,
    options: PreprocessOptions,
    *,
    extras: dict[str, tuple] | None = None,
    given_ids: list[int] | None = None,
    counts: bool = False,
) -> dict:
    """Stream `blocks` (objects with .label, .dense, .cat and optional .extras) into `out_dir`.

    `extras`: further per-row arrays the blocks carry in `.extras` ({name: (dtype, row_shape)}),
    e.g. the synthetic teacher's probabilities. `given_ids` (table sizes) says `.cat` already holds
    ids (dlrm's .npz): they are kept, taken modulo `max_ind_range`, and only rare-value remapping
    applies. `counts`: also store each feature's occurrences by id (`counts{j}`) in vocab.npz,
    for merging vocabularies later (Terabyte's per-day parts). Returns the metadata
    (table_sizes, rows, splits, ...).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = extras or {}
    assign = [IdAssigner(count=counts or options.min_frequency > 1) for _ in range(NUM_SPARSE)]
    dense_w = NpyAppender(out_dir / "dense.npy", np.int32, (NUM_DENSE,))
    sparse_w = NpyAppender(out_dir / "sparse.npy", np.int32, (NUM_SPARSE,))
    label_w = None
    extra_w = {k: NpyAppender(out_dir / f"{k}.npy", dt, shape) for k, (dt, shape) in extras.items()}
    has_label = None
    mod = None if options.max_ind_range is None else np.uint32(options.max_ind_range)
    for block in blocks:
        if has_label is None:
            has_label = block.label is not None
            if has_label:
                label_w = NpyAppender(out_dir / "label.npy", np.uint8, ())
        n = len(block.dense)
        dense = np.clip(np.asarray(block.dense), 0, None).astype(
            np.int32
        )  # negative / missing -> 0
        raw = np.asarray(block.cat, dtype=np.uint32 if given_ids is None else np.int64)
        if mod is not None and given_ids is None:
            raw = raw % mod
        ids = np.empty((n, NUM_SPARSE), dtype=np.int32)
        for j in range(NUM_SPARSE):
            if given_ids is None:
                ids[:, j] = assign[j](raw[:, j])
            else:
                ids[:, j] = raw[:, j] if mod is None else raw[:, j] % mod
                assign[j].add_counts(ids[:, j], given_ids[j])
        dense_w.append(dense)
        sparse_w.append(ids)
        if label_w is not None:
            label_w.append(block.label)
        for k, w in extra_w.items():
            w.append(block.extras[k])
    writers = [dense_w, sparse_w, *extra_w.values()] + ([label_w] if label_w is not None else [])
    for w in writers:
        w.close()
    rows = dense_w.rows
    table_sizes = [a.size for a in assign] if given_ids is None else list(given_ids)
    remaps = None
    if options.min_frequency > 1 and rows:
        remaps = [rare_remap(a.counts, options.min_frequency) for a in assign]
        table_sizes = [int(m.max()) + 1 if len(m) else 0 for m in remaps]
        _remap_in_place(out_dir / "sparse.npy", remaps)
    if given_ids is None:  # raw value -> id, to score other files of raw rows (lit_dlrm.predict)
        vocab = {}
        for j, a in enumerate(assign):
            vocab[f"keys{j}"] = a.keys  # sorted raw values (after max_ind_range)
            vocab[f"ids{j}"] = (a.ids if remaps is None else remaps[j][a.ids]).astype(np.int32)
            if counts:  # by id (after the rare-value remapping, if any)
                c = a.counts
                if remaps is not None:
                    c = np.bincount(remaps[j], weights=c, minlength=table_sizes[j])
                vocab[f"counts{j}"] = c.astype(np.int64)
        np.savez(out_dir / VOCABULARY, **vocab)
    arrays = {
        "dense": {"file": "dense.npy", "dtype": "int32", "shape": [rows, NUM_DENSE]},
        "sparse": {"file": "sparse.npy", "dtype": "int32", "shape": [rows, NUM_SPARSE]},
    }
    if label_w is not None:
        arrays["label"] = {"file": "label.npy", "dtype": "uint8", "shape": [rows]}
    for k, w in extra_w.items():
        arrays[k] = {"file": f"{k}.npy", "dtype": str(w.dtype), "shape": [rows, *w.row_shape]}
    return {
        "rows": rows,
        "has_label": bool(has_label),
        "num_dense": NUM_DENSE,
        "num_sparse": NUM_SPARSE,
        "table_sizes": [int(t) for t in table_sizes],
        "days": day_boundaries(rows),
        "splits": split_ranges(rows),
        "arrays": arrays,
    }


def _remap_in_place(path: Path, remaps: list[np.ndarray], rows_per_block: int = 1 << 18) -> None:
    """sparse.npy[:, j] = remaps[j][sparse.npy[:, j]], block by block with plain reads/writes."""
    width = NUM_SPARSE * 4
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos = NpyAppender.HEADER_BYTES
        while pos < end:
            f.seek(pos)
            buf = f.read(min(rows_per_block * width, end - pos))
            ids = np.frombuffer(buf, dtype=np.int32).reshape(-1, NUM_SPARSE).copy()
            for j in range(NUM_SPARSE):
                ids[:, j] = remaps[j][ids[:, j]]
            f.seek(pos)
            f.write(ids.tobytes())
            pos += len(buf)


# ----------------------------------------------------------------------------------------------
# cache directories: keys, fingerprints, atomic builds


def fingerprint_file(path: str | os.PathLike, edge_bytes: int = 1 << 20) -> dict:
    """Size, mtime and a SHA-256 of the first and last MiB: cheap, changes when the file does."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(edge_bytes))
        if st.st_size > edge_bytes:
            f.seek(max(edge_bytes, st.st_size - edge_bytes))
            h.update(f.read(edge_bytes))
    return {
        "name": path.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256_head_tail": h.hexdigest(),
    }


def cache_key(source: str, fingerprint: dict, options: dict) -> str:
    blob = json.dumps(
        {"v": FORMAT_VERSION, "source": source, "input": fingerprint, "options": options},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_meta(directory: Path, key: str | None = None) -> dict | None:
    """meta.json of a complete cache directory (matching `key` if given), else None."""
    try:
        meta = json.loads((Path(directory) / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format_version") != FORMAT_VERSION or not meta.get("complete"):
        return None
    if key is not None and meta.get("key") != key:
        return None
    return meta


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_cache(
    cache_dir: str | os.PathLike,
    name: str,
    key: str,
    build: Callable[[Path], dict],
    meta_extra: dict,
) -> tuple[Path, dict]:
    """Return (directory, meta) of the cache `name`, building it with `build(tmp_dir)` if needed.

    Concurrent callers (e.g. DDP ranks) serialise on a lock file; the build goes to a temp
    directory that is renamed into place after meta.json (with "complete": true) is written.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / name
    meta = read_meta(final, key)
    if meta is not None:
        return final, meta
    with _locked(cache_dir / f".{name}.lock"):
        meta = read_meta(final, key)
        if meta is not None:
            return final, meta
        for stale in cache_dir.glob(f".tmp-{name}-*"):  # left by killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            with naming_no_space(final):
                t0 = time.perf_counter()
                meta = build(tmp)
            meta.update(meta_extra)
            meta.update(
                format_version=FORMAT_VERSION,
                key=key,
                build_seconds=round(time.perf_counter() - t0, 3),
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                complete=True,
            )
            write_json(tmp / META, meta)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, meta


def options_dict(options: PreprocessOptions) -> dict:
    return asdict(options)


# ----------------------------------------------------------------------------------------------
# Kaggle text files


class _Progress:
    """tqdm bar in rows with rows/s and an ETA; the total is estimated from bytes read so far."""

    def __init__(self, total_bytes: int, desc: str, enable: bool | None):
        from tqdm.auto import tqdm

        self.total_bytes = max(total_bytes, 1)
        self.bar = tqdm(
            total=None,
            unit="rows",
            unit_scale=True,
            desc=desc,
            disable=enable is False if enable is not None else None,
            dynamic_ncols=True,
        )
        if enable is True:
            self.bar.disable = False
        self.rows = 0

    def __call__(self, bytes_read: int, rows: int) -> None:
        if bytes_read > 0:
            self.bar.total = max(rows, int(rows * self.total_bytes / bytes_read))
        self.bar.update(rows - self.rows)
        self.rows = rows

    def close(self):
        self.bar.close()


def preprocess_text(
    path: str | os.PathLike,
    out_dir: Path,
    options: PreprocessOptions,
    *,
    has_label: bool | None = None,
    progress: bool | None = None,
    block_bytes: int | None = None,
) -> dict:
    """Parse a Kaggle-format text file (TSV/CSV, gzip or not) into `out_dir`; return its meta."""
    from .criteo import CriteoFormatError, ParseStats, iter_blocks, sniff_format

    path = Path(path)
    fmt = sniff_format(path, has_label=has_label)
    stats = ParseStats()
    bar = _Progress(path.stat().st_size, f"preprocess {path.name}", progress)
    kwargs = {} if block_bytes is None else {"block_bytes": block_bytes}
    try:
        blocks = iter_blocks(
            path, fmt=fmt, on_bad_line=options.on_bad_line, stats=stats, progress=bar, **kwargs
        )
        meta = build_arrays(blocks, out_dir, options)
    finally:
        bar.close()
    if stats.rows == 0:  # every line skipped: say so here, not later as "has no labels"
        raise CriteoFormatError(
            f"{path.name}: no valid rows: all {stats.lines} line(s) were malformed and skipped "
            f"(on_bad_line='skip'); first: {stats.examples[0]}"
        )
    if stats.skipped:
        log.warning(
            "%s: skipped %d bad line(s) of %d (on_bad_line='skip'); first: %s",
            path.name,
            stats.skipped,
            stats.lines,
            "; ".join(stats.examples[:3]),
        )
    meta.update(
        lines=stats.lines,
        skipped_lines=stats.skipped,
        skipped_examples=stats.examples,
        text_format={
            "sep": fmt.sep.decode(),
            "header": fmt.header,
            "has_id": fmt.has_id,
            "gzip": fmt.gzip,
        },
    )
    return meta


def cached_text(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    options: PreprocessOptions,
    *,
    has_label: bool | None = None,
    progress: bool | None = None,
) -> tuple[Path, dict]:
    """(directory, meta) of a Kaggle text file's cache: built on first use, reused while the
    input and the options match. A missing file raises FileNotFoundError naming --data.path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data.path: no such file: {path}")
    fp = fingerprint_file(path)
    opts = {**options_dict(options), "has_label": has_label}
    key = cache_key("kaggle", fp, opts)
    stem = path.name.split(".")[0]
    return ensure_cache(
        cache_dir,
        f"kaggle-{stem}-{key}",
        key,
        lambda tmp: preprocess_text(path, tmp, options, has_label=has_label, progress=progress),
        {"source": "kaggle", "input": {**fp, "path": str(path)}, "options": opts},
    )
