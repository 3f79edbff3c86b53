"""Criteo Terabyte from its raw day files, with facebookresearch/dlrm's rules; and a Terabyte-shaped
synthetic writer (the same day-file layout, labels from the planted teacher; optionally the same
rows as MLPerf's multi-hot set beside them).

Input: a directory holding `day_0` .. `day_{D-1}` (D >= 2, consecutive), each plain text or gzip
(`day_3` or `day_3.gz`, recognised by its bytes), Kaggle-format lines: label, I1..I13, C1..C26.
The rules are dlrm's `data_utils.py` (`getCriteoAdData`) and `dlrm_data_pytorch.py`
(`CriteoDataset`, dataset="terabyte"):
  * days 0 .. D-2 train, in file order; day D-1 is split: test = its first ceil(n / 2) rows,
    val = the rest (dlrm's `np.array_split(.., 2)` and its memory-mapped `ceil(n / 2.0)`);
  * missing -> 0, negative dense -> 0; a hash is taken modulo `max_ind_range` first when set (40M
    in MLPerf's setup); ids per feature in order of first appearance over the days in order (the
    rows kept); `min_frequency` maps rarer values to one shared id, as for Kaggle;
  * `sub_sample_rate` (dlrm's `--data-sub-sample-rate`): a train-day row of label 0 is dropped when
    its uniform draw u < rate. u comes from `numpy.random.default_rng([seed, day])`, one draw per
    parsed row in file order, so it does not depend on block sizes or on the number of workers.
    dlrm's code draws unseeded and sub-samples day 23 too; here the evaluation day is kept whole.

Work, bounded in memory by the block size and the vocabularies (not the row count):
  1. each day is parsed on its own (`criteo.iter_blocks`) into a part directory under
     `<cache_dir>/terabyte-parts/` by `preprocess.build_arrays`: dense, label, day-local ids and
     the day's vocabulary with counts. Days run in parallel worker processes; a part gets its final
     name only when complete, so a killed run keeps the days it finished and a rerun does the rest.
  2. assembly: the day vocabularies are merged in day order (first appearance over all days), then
     every day's rows are copied into one cache (the layout of `preprocess.py`) with global ids.
     The parts are removed once the cache is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import atomic_write
from .criteo import (
    MISSING_DENSE,
    CriteoFormatError,
    ParsedBlock,
    ParseStats,
    iter_blocks,
    sniff_format,
)
from .kaggle import NUM_DENSE, NUM_SPARSE
from .preprocess import (
    VOCABULARY,
    IdAssigner,
    NpyAppender,
    PreprocessOptions,
    build_arrays,
    cache_key,
    ensure_cache,
    fingerprint_file,
    last_day_splits,
    options_dict,
    rare_remap,
    read_meta,
)
from .synthetic import SyntheticConfig, Teacher

log = logging.getLogger("lit_dlrm.data")

# Rows of each table after MLPerf's max_ind_range = 40M on Criteo Terabyte (C1..C26), as TorchRec's
# DLRM example passes them (facebookresearch/dlrm, torchrec_dlrm/README.MD,
# --num_embeddings_per_feature): 204,184,588 rows in total.
# fmt: off
TERABYTE_TABLE_SIZES = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
    11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)
# fmt: on
MLPERF_MAX_IND_RANGE = 40_000_000
TERABYTE_DAYS = 24
PARTS = "terabyte-parts"
_DAY_NAME = re.compile(r"^day_(\d+)(\.gz)?$")

assert len(TERABYTE_TABLE_SIZES) == NUM_SPARSE


# ----------------------------------------------------------------------------------------------
# the day files


def day_files(directory: str | os.PathLike) -> list[Path]:
    """`day_0` .. `day_{D-1}` of `directory` in day order (each plain or `.gz`); D >= 2.

    Raises FileNotFoundError / ValueError naming --data.path when the directory is missing, holds
    no day files, skips a day, or holds a day both plain and gzipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data.path: no such directory of day files: {directory}")
    found: dict[int, list[Path]] = {}
    for p in directory.iterdir():
        m = _DAY_NAME.match(p.name)
        if m and p.is_file():
            found.setdefault(int(m.group(1)), []).append(p)
    if len(found) < 2:
        raise ValueError(
            f"--data.path: {directory} holds {len(found)} day file(s); expected day_0 .. day_N "
            "(N >= 1, plain or .gz): the last day is split into test and validation"
        )
    days = sorted(found)
    if days != list(range(len(days))):
        missing = sorted(set(range(days[-1] + 1)) - set(days))
        raise ValueError(
            f"--data.path: {directory}: day files must be consecutive from day_0; "
            f"missing day_{missing[0]} (found up to day_{days[-1]})"
        )
    for d in days:
        if len(found[d]) > 1:
            raise ValueError(
                f"--data.path: {directory}: day {d} is there twice "
                f"({', '.join(sorted(p.name for p in found[d]))}); keep one"
            )
    return [found[d][0] for d in days]


# ----------------------------------------------------------------------------------------------
# stage 1: one day -> one part directory


@dataclass(frozen=True)
class DayJob:
    path: Path
    day: int
    train: bool  # a train day (down-sampled) or the evaluation day
    parts_dir: Path
    options: PreprocessOptions  # max_ind_range and on_bad_line (min_frequency acts at assembly)
    sub_sample_rate: float
    seed: int
    threads: int = 1
    block_bytes: int | None = None

    def key_options(self) -> dict:
        rate = self.sub_sample_rate if self.train else 0.0
        return {
            "day": self.day,
            "max_ind_range": self.options.max_ind_range,
            "on_bad_line": self.options.on_bad_line,
            "sub_sample_rate": rate,
            "seed": self.seed if rate > 0 else None,
        }

    def name_and_key(self) -> tuple[str, str]:
        key = cache_key("terabyte-day", fingerprint_file(self.path), self.key_options())
        return f"{self.path.name.split('.')[0]}-{key}", key


def _sub_sampled(blocks, rate: float, rng: np.random.Generator, tally: dict) -> Iterator:
    """Drop label-0 rows whose uniform draw is < rate (one draw per row, in order)."""
    for b in blocks:
        u = rng.random(len(b))
        keep = (b.label != 0) | (u >= rate)
        tally["dropped"] += int(len(b) - np.count_nonzero(keep))
        if keep.all():
            yield b
        elif keep.any():
            yield ParsedBlock(
                label=b.label[keep], dense=b.dense[keep], cat=b.cat[keep], first_line=b.first_line
            )


def preprocess_day(job: DayJob, progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Build (or find) the part directory of one day; returns its meta (with "dir").

    `progress(day, raw_bytes_read, rows_parsed)` is called after every block when given.
    """
    name, key = job.name_and_key()
    opts = PreprocessOptions(
        max_ind_range=job.options.max_ind_range, on_bad_line=job.options.on_bad_line
    )

    def build(tmp: Path) -> dict:
        fmt = sniff_format(job.path, has_label=True)
        stats = ParseStats()
        tally = {"dropped": 0}
        kwargs = {} if job.block_bytes is None else {"block_bytes": job.block_bytes}
        blocks = iter_blocks(
            job.path,
            fmt=fmt,
            on_bad_line=opts.on_bad_line,
            stats=stats,
            threads=job.threads,
            progress=None if progress is None else lambda b, r: progress(job.day, b, r),
            **kwargs,
        )
        rate = job.sub_sample_rate if job.train else 0.0
        if rate > 0:
            blocks = _sub_sampled(blocks, rate, np.random.default_rng([job.seed, job.day]), tally)
        meta = build_arrays(blocks, tmp, opts, counts=True)
        if meta["rows"] == 0:
            raise CriteoFormatError(
                f"{job.path.name}: no rows left ({stats.lines} line(s), {stats.skipped} "
                f"malformed, {tally['dropped']} dropped by sub_sample_rate={rate})"
            )
        positives = int(np.load(tmp / "label.npy", mmap_mode="r").sum(dtype=np.int64))
        meta.update(
            day=job.day,
            lines=stats.lines,
            skipped_lines=stats.skipped,
            skipped_examples=stats.examples,
            sub_sampled_rows=tally["dropped"],
            positives=positives,
            gzip=fmt.gzip,
        )
        return meta

    job.parts_dir.mkdir(parents=True, exist_ok=True)
    extra = {"source": "terabyte-day", "input": {**fingerprint_file(job.path)}}
    extra["options"] = job.key_options()
    directory, meta = ensure_cache(job.parts_dir, name, key, build, extra)
    return {**meta, "dir": str(directory)}


_QUEUE = None  # a worker process's progress queue


def _init_worker(q) -> None:
    global _QUEUE
    _QUEUE = q


def _run_in_worker(job: DayJob) -> dict:
    return preprocess_day(job, lambda d, b, r: _QUEUE.put((d, b, r)))


class _DaysBar:
    """One tqdm bar in rows (total estimated from raw bytes read) with the days done."""

    def __init__(self, jobs: list[DayJob], n_days: int, enable: bool | None):
        from tqdm.auto import tqdm

        self.sizes = {j.day: max(j.path.stat().st_size, 1) for j in jobs}
        self.read = dict.fromkeys(self.sizes, 0)
        self.rows = dict.fromkeys(self.sizes, 0)
        self.todo, self.done, self.n_days = len(jobs), 0, n_days
        self.bar = tqdm(  # enable None: shown when attached to a terminal
            total=None,
            unit="rows",
            unit_scale=True,
            dynamic_ncols=True,
            disable=None if enable is None else not enable,
        )
        if enable is True:
            self.bar.disable = False
        self._describe()

    def _describe(self) -> None:
        self.bar.set_description(
            f"terabyte: {self.done}/{self.todo} days done ({self.n_days - self.todo} reused)"
        )

    def __call__(self, day: int, bytes_read: int, rows: int) -> None:
        self.read[day], before = bytes_read, sum(self.rows.values())
        self.rows[day] = rows
        total_read, total_rows = sum(self.read.values()), sum(self.rows.values())
        if total_read:
            estimate = int(total_rows * sum(self.sizes.values()) / total_read)
            self.bar.total = max(total_rows, estimate)
        self.bar.update(total_rows - before)

    def day_done(self) -> None:
        self.done += 1
        self._describe()

    def close(self) -> None:
        self.bar.close()


def preprocess_days(
    paths: list[Path],
    parts_dir: Path,
    options: PreprocessOptions,
    *,
    sub_sample_rate: float = 0.0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
    block_bytes: int | None = None,
) -> list[dict]:
    """Stage 1 for every day (parts already complete are reused); the parts' metas in day order.

    `workers`: processes working on days at once, each parsing with 2 threads (default: half the
    CPU count, at most the days left); 1 runs in this process. A failing day raises its error
    after the running days stop; the days finished so far stay complete.
    """
    cpus = os.cpu_count() or 1
    jobs = [
        DayJob(p, d, d < len(paths) - 1, parts_dir, options, sub_sample_rate, seed, 1, block_bytes)
        for d, p in enumerate(paths)
    ]
    metas: dict[int, dict] = {}
    pending = []
    for job in jobs:  # reuse finished parts without starting a worker
        name, key = job.name_and_key()
        meta = read_meta(parts_dir / name, key)
        if meta is None:
            pending.append(job)
        else:
            metas[job.day] = {**meta, "dir": str(parts_dir / name)}
    workers = max(1, min(workers or cpus // 2, len(pending) or 1))
    threads = max(1, min(2, cpus // workers))
    pending = [dataclasses.replace(j, threads=threads) for j in pending]
    bar = _DaysBar(pending, len(jobs), progress)
    try:
        if workers == 1:
            for job in pending:
                metas[job.day] = preprocess_day(job, bar)
                bar.day_done()
        else:
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            with ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=(q,)) as pool:
                futures = {pool.submit(_run_in_worker, job): job for job in pending}
                running = set(futures)
                try:
                    while running:
                        done, running = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                        _drain(q, bar)
                        for f in done:
                            metas[futures[f].day] = f.result()
                            bar.day_done()
                finally:
                    for f in running:
                        f.cancel()
            _drain(q, bar)
    finally:
        bar.close()
    return [metas[d] for d in range(len(jobs))]


def _drain(q, bar: _DaysBar) -> None:
    while True:
        try:
            bar(*q.get_nowait())
        except queue.Empty:
            return


# ----------------------------------------------------------------------------------------------
# stage 2: parts -> one cache


def _appearance_order(vocab, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw values in the day's first-appearance order, their counts) of feature j of a part."""
    keys, ids, counts = vocab[f"keys{j}"], vocab[f"ids{j}"], vocab[f"counts{j}"]
    values = np.empty(len(keys), dtype=keys.dtype)
    values[ids] = keys
    return values, counts


def assemble(
    parts: list[dict], out_dir: Path, options: PreprocessOptions, rows_per_block: int = 1 << 18
) -> dict:
    """Merge the days' parts (metas from `preprocess_days`) into one cache in `out_dir`.

    Ids: per feature, the day vocabularies merged in day order, so a value's id is its rank of
    first appearance over all days (then `min_frequency`). Returns the cache's meta.
    """
    out_dir = Path(out_dir)
    assign = [IdAssigner(count=False) for _ in range(NUM_SPARSE)]
    counts = [np.zeros(0, dtype=np.int64) for _ in range(NUM_SPARSE)]
    for part in parts:  # pass 1: vocabularies only
        with np.load(Path(part["dir"]) / VOCABULARY) as vocab:
            for j in range(NUM_SPARSE):
                values, c = _appearance_order(vocab, j)
                gid = assign[j](values)
                counts[j] = np.pad(counts[j], (0, assign[j].size - len(counts[j])))
                counts[j][gid] += c
    final = [np.arange(a.size, dtype=np.int32) for a in assign]  # global id -> cache id
    if options.min_frequency > 1:
        final = [rare_remap(c, options.min_frequency) for c in counts]
    table_sizes = [int(f.max()) + 1 if len(f) else 0 for f in final]

    writers = {
        "dense": NpyAppender(out_dir / "dense.npy", np.int32, (NUM_DENSE,)),
        "sparse": NpyAppender(out_dir / "sparse.npy", np.int32, (NUM_SPARSE,)),
        "label": NpyAppender(out_dir / "label.npy", np.uint8, ()),
    }
    for part in parts:  # pass 2: rows
        d = Path(part["dir"])
        with np.load(d / VOCABULARY) as vocab:
            maps = []
            for j in range(NUM_SPARSE):
                values, _ = _appearance_order(vocab, j)
                pos = np.searchsorted(assign[j].keys, values)
                maps.append(final[j][assign[j].ids[pos]])
        arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in writers}
        for s in range(0, part["rows"], rows_per_block):
            e = min(s + rows_per_block, part["rows"])
            local = np.asarray(arrays["sparse"][s:e])
            ids = np.empty_like(local)
            for j in range(NUM_SPARSE):
                ids[:, j] = maps[j][local[:, j]]
            writers["sparse"].append(ids)
            writers["dense"].append(arrays["dense"][s:e])
            writers["label"].append(arrays["label"][s:e])
        del arrays
    for w in writers.values():
        w.close()
    vocab = {}
    for j, a in enumerate(assign):
        vocab[f"keys{j}"] = a.keys
        vocab[f"ids{j}"] = final[j][a.ids].astype(np.int32)
    np.savez(out_dir / VOCABULARY, **vocab)
    day_rows = [int(p["rows"]) for p in parts]
    rows = sum(day_rows)
    return {
        "rows": rows,
        "has_label": True,
        "num_dense": NUM_DENSE,
        "num_sparse": NUM_SPARSE,
        "table_sizes": table_sizes,
        "days": np.cumsum([0, *day_rows]).tolist(),
        "splits": last_day_splits(day_rows, first_half="test"),
        "arrays": {
            "dense": {"file": "dense.npy", "dtype": "int32", "shape": [rows, NUM_DENSE]},
            "sparse": {"file": "sparse.npy", "dtype": "int32", "shape": [rows, NUM_SPARSE]},
            "label": {"file": "label.npy", "dtype": "uint8", "shape": [rows]},
        },
        "per_day": [
            {
                k: p[k]
                for k in ("day", "lines", "rows", "skipped_lines", "sub_sampled_rows", "positives")
            }
            for p in parts
        ],
        "lines": sum(int(p["lines"]) for p in parts),
        "skipped_lines": sum(int(p["skipped_lines"]) for p in parts),
    }


def cached_terabyte(
    directory: str | os.PathLike,
    cache_dir: str | os.PathLike,
    options: PreprocessOptions,
    *,
    sub_sample_rate: float = 0.0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
    block_bytes: int | None = None,
) -> tuple[Path, dict]:
    """(directory, meta) of the cache of a directory of Terabyte day files: built on first use
    (stage 1 per day, resumable; stage 2 assembly), reused while the files and options match.
    `sub_sample_rate` and `seed` are recorded in meta["options"]."""
    if not 0.0 <= sub_sample_rate < 1.0:
        raise ValueError(f"data.sub_sample_rate: expected a rate in [0, 1), got {sub_sample_rate}")
    paths = day_files(directory)
    cache_dir = Path(cache_dir)
    fps = [fingerprint_file(p) for p in paths]
    opts = {
        **options_dict(options),
        "sub_sample_rate": sub_sample_rate,
        "seed": seed if sub_sample_rate > 0 else None,
    }
    key = cache_key("terabyte", {"days": fps}, opts)
    parts_dir = cache_dir / PARTS
    made: list[dict] = []

    def build(tmp: Path) -> dict:
        made.extend(
            preprocess_days(
                paths,
                parts_dir,
                options,
                sub_sample_rate=sub_sample_rate,
                seed=seed,
                workers=workers,
                progress=progress,
                block_bytes=block_bytes,
            )
        )
        return assemble(made, tmp, options)

    name = f"terabyte-{Path(directory).resolve().name}-{key}"
    out, meta = ensure_cache(
        cache_dir,
        name,
        key,
        build,
        {"source": "terabyte", "input": {"path": str(directory), "days": fps}, "options": opts},
    )
    for part in made:  # the cache is complete: the parts are no longer needed
        shutil.rmtree(part["dir"], ignore_errors=True)
        (parts_dir / f".{Path(part['dir']).name}.lock").unlink(missing_ok=True)
    if made:
        with contextlib.suppress(OSError):  # kept if it holds anything else
            parts_dir.rmdir()
    return out, meta


# ----------------------------------------------------------------------------------------------
# the synthetic Terabyte-shaped writer


@dataclass(frozen=True)
class TerabyteSyntheticConfig(SyntheticConfig):
    """`SyntheticConfig` whose tables are Terabyte's (MLPerf's 40M-capped sizes), each capped at
    `max_table_size` (40_000_000: the full sizes)."""

    def table_sizes(self) -> list[int]:
        return [min(t, self.max_table_size) for t in TERABYTE_TABLE_SIZES]


def write_days(
    out_dir: str | os.PathLike,
    *,
    days: int = TERABYTE_DAYS,
    rows_per_day: int = 20_000,
    max_table_size: int = 20_000,
    seed: int = 0,
    compress: bool = False,
    multi_hot: list[int] | None = None,
) -> list[Path]:
    """Write `day_0` .. `day_{days-1}` (`.gz` when `compress`) of `rows_per_day` Kaggle-format
    lines each into `out_dir`; rows and labels from the planted teacher (`Teacher`) over
    `TerabyteSyntheticConfig`. With `multi_hot` (a bag size per table, e.g.
    `formats.MLPERF_MULTI_HOT_SIZES`), the same rows also as MLPerf's multi-hot set beside them
    (`formats.write_multihot_day`: `day_{i}_sparse_multi_hot.npz` + TorchRec's dense and labels,
    what `--data.source=torchrec_multihot` reads), hashes reduced modulo the capped table sizes;
    this holds a day of rows and the lookup tables in memory. Each file appears complete or not at
    all. Returns the paths written, day files first."""
    from .criteo import write_kaggle_tsv

    if days < 2 or rows_per_day < 1:
        raise ValueError(f"expected days >= 2 and rows_per_day >= 1, got {days}, {rows_per_day}")
    out_dir = Path(out_dir)
    config = TerabyteSyntheticConfig(
        rows=days * rows_per_day, max_table_size=max_table_size, seed=seed
    )
    tables = None
    if multi_hot is not None:
        from .formats import multihot_tables

        tables = multihot_tables(config.table_sizes(), list(multi_hot))
    blocks = Teacher.from_config(config).blocks()
    carry: list[ParsedBlock] = []
    paths, multi_hot_paths = [], []

    def take(n: int) -> Iterator[ParsedBlock]:
        while n > 0:
            b = carry.pop() if carry else next(blocks)
            if len(b) > n:
                carry.append(
                    ParsedBlock(label=b.label[n:], dense=b.dense[n:], cat=b.cat[n:], first_line=0)
                )
                b = ParsedBlock(label=b.label[:n], dense=b.dense[:n], cat=b.cat[:n], first_line=0)
            n -= len(b)
            yield b

    for d in range(days):
        path = out_dir / (f"day_{d}.gz" if compress else f"day_{d}")
        day = take(rows_per_day) if tables is None else list(take(rows_per_day))

        def write(tmp: Path, day=day) -> None:
            tmp.write_bytes(b"")
            for b in day:
                write_kaggle_tsv(tmp, b.label, b.dense, b.cat, append=True, compress=compress)

        atomic_write(path, write)
        paths.append(path)
        if tables is not None:
            from .formats import write_multihot_day

            dense = np.concatenate([b.dense for b in day])
            dense[dense == MISSING_DENSE] = 0  # as the text parser gives it
            label, cat = (np.concatenate([getattr(b, k) for b in day]) for k in ("label", "cat"))
            multi_hot_paths += write_multihot_day(out_dir, d, label, dense, cat, tables)
    return paths + multi_hot_paths


def _bag_sizes(text: str) -> list[int]:
    """--multi-hot: "mlperf" or NUM_SPARSE comma-separated bag sizes."""
    from .formats import MLPERF_MULTI_HOT_SIZES

    if text == "mlperf":
        return list(MLPERF_MULTI_HOT_SIZES)
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != NUM_SPARSE or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 'mlperf' or {NUM_SPARSE} comma-separated bag sizes >= 1, got {text!r}"
        )
    return sizes


def main(argv: list[str] | None = None) -> None:
    """`python -m lit_dlrm.data.terabyte write OUT_DIR ...`: `write_days` from the command line;
    prints {"days", "rows", "bytes" (of every file written)} as JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m lit_dlrm.data.terabyte",
        description="Write synthetic Criteo Terabyte day files (day_0 .. day_N, Kaggle format), "
        "optionally also as MLPerf's multi-hot set.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write synthetic day files into OUT_DIR")
    w.add_argument("out_dir")
    w.add_argument("--days", type=int, default=TERABYTE_DAYS)
    w.add_argument("--rows-per-day", type=int, default=20_000)
    w.add_argument(
        "--max-table-size",
        type=int,
        default=20_000,
        help=f"cap on every table's size ({MLPERF_MAX_IND_RANGE}: MLPerf's full Terabyte sizes)",
    )
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--gzip", action="store_true", help="write day_N.gz")
    w.add_argument(
        "--multi-hot",
        type=_bag_sizes,
        metavar="SIZES",
        help=f"also write the rows as MLPerf's multi-hot set (day_N_sparse_multi_hot.npz, "
        f"TorchRec's day_N_dense.npy / day_N_labels.npy): {NUM_SPARSE} comma-separated bag sizes "
        "(C1..C26), or 'mlperf' for MLPerf DLRM-DCNv2's",
    )
    a = ap.parse_args(argv)
    paths = write_days(
        a.out_dir,
        days=a.days,
        rows_per_day=a.rows_per_day,
        max_table_size=a.max_table_size,
        seed=a.seed,
        compress=a.gzip,
        multi_hot=a.multi_hot,
    )
    size = sum(p.stat().st_size for p in paths)
    print(json.dumps({"days": a.days, "rows": a.days * a.rows_per_day, "bytes": size}))


if __name__ == "__main__":
    main()
