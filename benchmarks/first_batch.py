"""Time to the first batch from each processed format, through `CriteoDataModule`.

Writes one synthetic data set (--rows rows over --days days, tables capped at --max-table-size)
in each format's file layout: dlrm's Terabyte day .npz (np.savez_compressed), its MLPerf binary
files, TorchRec's per-day npy and MLPerf's multi-hot npz (bags of --bag ids per feature). Only
the layout matters here; that each format's values are its tool's is tests/test_formats.py's job.
Then, for each source, --repeats times:
  cold: an empty cache directory: build the cache (dlrm_terabyte: decompress and convert) or the
        index (the others: read headers, nothing copied), setup, first shuffled train batch;
  warm: the cache or index exists: a fresh DataModule's setup and first shuffled train batch.
Reports the median, min and max seconds of each. Writes Markdown to benchmarks/results/.

    python -m benchmarks.first_batch --rows 1000000 --repeats 5       # from the checkout's root
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lit_dlrm.paths import atomic_write

HERE = Path(__file__).resolve().parent


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
        np.save(npy / f"day_{i}_sparse_contig_freq.npy", c.astype(np.int64) + 2)
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


def first_batch(source: str, path: Path, options: dict, cache: Path, batch_size: int) -> float:
    from lit_dlrm.data import CriteoDataModule

    t = time.perf_counter()
    dm = CriteoDataModule(
        source=source, path=str(path), cache_dir=str(cache), batch_size=batch_size, **options
    )
    dm.prepare_data()
    dm.setup()
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - t


def header(argv: list[str]) -> list[str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return [
        "# Time to the first batch from each processed format",
        "",
        f"- command: `{' '.join(['python -m benchmarks.first_batch', *argv])}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"- commit: {commit or 'unknown'}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--max-table-size", type=int, default=100_000)
    p.add_argument("--bag", type=int, default=3, help="ids per bag of the multi-hot set")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "results" / "first_batch.md")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error(f"--repeats: at least 5 for a median with its spread, got {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        formats = write_formats(root, args.rows, args.days, args.max_table_size, args.bag)
        for source, (path, options) in formats.items():
            cold, warm = [], []
            for r in range(args.repeats):
                cache = root / f"cache-{source}-{r}"
                cold.append(first_batch(source, path, options, cache, args.batch_size))
                warm.append(first_batch(source, path, options, cache, args.batch_size))
            row = {"source": source}
            for name, xs in (("cold", cold), ("warm", warm)):
                row[f"{name}_median_s"] = statistics.median(xs)
                row[f"{name}_min_s"], row[f"{name}_max_s"] = min(xs), max(xs)
            rows.append(row)
            print(row, flush=True)
    cols = list(rows[0])
    lines = header(argv) + [
        f"{args.rows} rows over {args.days} days; {args.repeats} repeats each. cold: empty "
        "cache directory (cache or index built); warm: cache or index present.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[c]:.3f}" if c != "source" else r[c] for c in cols) + " |"
        )
    atomic_write(args.out, lambda part: part.write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
