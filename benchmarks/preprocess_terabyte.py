"""Terabyte preprocessing: lit_dlrm's per-day pipeline against facebookresearch/dlrm's own code,
on the same raw day files, in the same run.

Writes synthetic Terabyte day files (`python -m lit_dlrm.data.terabyte write`'s generator), then
runs, each in a fresh process (repeated; median, min and max of the wall time):
  * lit_dlrm, 1 worker and N workers (`cached_terabyte`: parse, hash, ids, down-sampling off,
    assembly into the memory-mapped cache);
  * dlrm's `data_utils.getCriteoAdData(..., criteo_kaggle=False, memory_map=False)` (its Terabyte
    path) serially and with `dataset_multiprocessing=True` (one process per day), imported from a
    dlrm checkout and run by a Python with NumPy < 2 (dlrm's code needs it). Its stdout, one line
    per row in the serial path, goes to /dev/null.
Both sides use the same `--max-ind-range`; after each dlrm run its `terabyte_processed.npz` is
compared with lit_dlrm's cache (ids, dense, labels must be equal), so both did the same work.
Peak RSS is the whole process tree's (children included), sampled every 10 ms.

To get dlrm and its Python:
    git clone https://github.com/facebookresearch/dlrm /tmp/dlrm
    python3 -m venv /tmp/dlrm-venv && /tmp/dlrm-venv/bin/pip install "numpy<2"
    python -m benchmarks.preprocess_terabyte --dlrm /tmp/dlrm \\
        --dlrm-python /tmp/dlrm-venv/bin/python
Without --dlrm only lit_dlrm's rows are measured. Results: benchmarks/results/preprocess_terabyte.*
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.tables import markdown_table, write_results

HERE = Path(__file__).resolve().parent

DLRM_CHILD = """
import json, sys, time
import data_utils
days_dir, days, max_ind_range, mp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = time.perf_counter()
data_utils.getCriteoAdData(
    days_dir + "/day", "terabyte_processed", max_ind_range=max_ind_range, sub_sample_rate=0.0,
    days=days, data_split="train", randomize="total", criteo_kaggle=False, memory_map=False,
    dataset_multiprocessing=mp == "1",
)
sys.stderr.write(json.dumps({"seconds": time.perf_counter() - t}) + "\\n")
"""


def lit_child(days_dir: str, cache: str, max_ind_range: int, workers: int) -> None:
    from lit_dlrm.data.preprocess import PreprocessOptions
    from lit_dlrm.data.terabyte import cached_terabyte

    t = time.perf_counter()
    opts = PreprocessOptions(max_ind_range=max_ind_range or None)
    d, meta = cached_terabyte(days_dir, cache, opts, workers=workers, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "rows": meta["rows"], "dir": str(d)}))


def _tree_rss_kib(pid: int) -> int:
    """Resident KiB of `pid` and all its descendants (Linux /proc); 0 for processes gone."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict | None = None, stdout=subprocess.PIPE) -> tuple:
    """(completed process, peak RSS of its process tree in MiB, sampled every 10 ms)."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=HERE.parent)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return out, err, peak[0] / 1024


def fresh_days(raw: Path, work: Path) -> Path:
    """A new directory with hard links to the day files (dlrm writes its files beside them)."""
    d = Path(tempfile.mkdtemp(dir=work, prefix="days-"))
    for p in raw.iterdir():
        os.link(p, d / p.name)
    return d


def check_same(dlrm_npz: Path, lit_dir: Path) -> None:
    """dlrm's processed .npz holds the same ids, dense values and labels as lit_dlrm's cache."""
    with np.load(dlrm_npz) as z:
        pairs = {"X_cat": "sparse", "X_int": "dense", "y": "label"}
        for k, ours in pairs.items():
            mine = np.load(lit_dir / f"{ours}.npy")
            if not np.array_equal(z[k].astype(np.int64), mine.astype(np.int64)):
                raise SystemExit(
                    f"dlrm's {k} differs from lit_dlrm's {ours}.npy: not the same work"
                )


def measure(
    days: int,
    rows_per_day: int,
    max_table_size: int,
    max_ind_range: int,
    repeats: int,
    workers: int,
    dlrm: str | None,
    dlrm_python: str,
    workdir: str | None,
    verbose: bool = True,
) -> list[dict]:
    from lit_dlrm.data.terabyte import write_days

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        raw = work / "raw"
        write_days(raw, days=days, rows_per_day=rows_per_day, max_table_size=max_table_size)
        raw_bytes = sum(p.stat().st_size for p in raw.iterdir())
        rows = days * rows_per_day
        sides = [(f"lit_dlrm, {w} worker(s)", "lit", w) for w in sorted({1, workers})]
        if dlrm:
            sides += [("dlrm data_utils, serial", "dlrm", 0)]
            sides += [(f"dlrm data_utils, multiprocessing ({days} processes)", "dlrm", 1)]
        results, lit_dir = [], None
        for name, kind, arg in sides:
            seconds, peaks = [], []
            for r in range(repeats):
                days_dir = fresh_days(raw, work)
                if kind == "lit":
                    cache = work / f"cache-{arg}-{r}"
                    cmd = [sys.executable, "-m", "benchmarks.preprocess_terabyte", "--child"]
                    cmd += [str(days_dir), str(cache), str(max_ind_range), str(arg)]
                    out, _, peak = run_measured(cmd)
                    res = json.loads(out.decode().strip().splitlines()[-1])
                    if res["rows"] != rows:
                        raise SystemExit(f"lit_dlrm kept {res['rows']} rows of {rows}")
                    if lit_dir is None:
                        lit_dir = Path(res["dir"])
                else:
                    env = {**os.environ, "PYTHONPATH": str(Path(dlrm).resolve())}
                    cmd = [dlrm_python, "-c", DLRM_CHILD, str(days_dir), str(days)]
                    cmd += [str(max_ind_range), str(arg)]
                    _, err, peak = run_measured(cmd, env=env, stdout=subprocess.DEVNULL)
                    res = json.loads(err.decode().strip().splitlines()[-1])
                    check_same(days_dir / "terabyte_processed.npz", lit_dir)
                seconds.append(res["seconds"])
                peaks.append(peak)
                shutil.rmtree(days_dir)
            med = statistics.median(seconds)
            results.append(
                {
                    "impl": name,
                    "rows": rows,
                    "repeats": repeats,
                    "seconds_median": round(med, 3),
                    "seconds_min": round(min(seconds), 3),
                    "seconds_max": round(max(seconds), 3),
                    "rows_per_s": round(rows / med),
                    "peak_rss_mib": round(max(peaks), 1),
                    "raw_mib": round(raw_bytes / 2**20, 1),
                }
            )
            verbose and print(results[-1], flush=True)
        return results


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=HERE.parent
        )
        return out.stdout.decode().strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=4, help="day files (the last is test/val)")
    ap.add_argument("--rows-per-day", type=int, default=50_000)
    ap.add_argument("--max-table-size", type=int, default=100_000, help="generator's table cap")
    ap.add_argument("--max-ind-range", type=int, default=40_000_000, help="0: no hashing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lit_dlrm's N")
    ap.add_argument("--dlrm", default=None, help="a facebookresearch/dlrm checkout")
    ap.add_argument("--dlrm-python", default="python3", help="a Python with numpy<2 for dlrm")
    ap.add_argument("--workdir", default=None, help="where day files go (default: a temp dir)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        days_dir, cache, mir, workers = a.child
        lit_child(days_dir, cache, int(mir), int(workers))
        return []
    if a.dlrm and not (Path(a.dlrm) / "data_utils.py").is_file():
        raise SystemExit(f"--dlrm: {a.dlrm} has no data_utils.py (a facebookresearch/dlrm clone?)")
    rows = measure(
        a.days,
        a.rows_per_day,
        a.max_table_size,
        a.max_ind_range,
        a.repeats,
        a.workers,
        a.dlrm,
        a.dlrm_python,
        a.workdir,
    )
    command = "python -m benchmarks.preprocess_terabyte " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    header = [
        "# Terabyte preprocessing: lit_dlrm vs facebookresearch/dlrm's data_utils",
        "",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; commit: {_commit()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        f"- data: {a.days} synthetic day files x {a.rows_per_day:,} rows, "
        f"max_ind_range {a.max_ind_range:,}; wall seconds inside each process (median of "
        f"{a.repeats}), peak RSS of its process tree (sampled every 10 ms)"
        + ("" if a.dlrm else "; dlrm not run (no --dlrm)"),
        "",
    ]
    columns = list(rows[0])
    text = "\n".join(header) + "\n" + markdown_table(rows, columns)
    print("\n" + text)
    write_results(a.out_dir, "preprocess_terabyte", rows, text)
    return rows


if __name__ == "__main__":
    main()
