"""Terabyte preprocessing: lit_dlrm's per-day pipeline against facebookresearch/dlrm's own code,
on the same raw day files, in the same run.

Writes synthetic Terabyte day files (`python -m lit_dlrm.data.terabyte write`'s generator; the
scale sets days, rows per day and the generator's table cap), then runs four sides ``repeats``
times in ABBA order (:mod:`benchmarks.harness`), each run a fresh process on fresh hard links to
the day files:
  * lit_dlrm, 1 worker and ``--workers`` workers (`cached_terabyte`: parse, hash, ids,
    down-sampling off, assembly into the memory-mapped cache);
  * dlrm's `data_utils.getCriteoAdData(..., criteo_kaggle=False, memory_map=False)` (its Terabyte
    path) serially and with `dataset_multiprocessing=True` (one process per day), imported from a
    dlrm checkout (``--dlrm``) and run by a Python with NumPy < 2 (``--dlrm-python``; dlrm's code
    needs it). Its stdout, one line per row in the serial path, goes to /dev/null.
Both sides hash with MLPerf's `max_ind_range` (40,000,000). Same work: every run's labels, dense
integers and ids (lit_dlrm's cache, dlrm's `terabyte_processed.npz`) must be equal, else the run
fails (:class:`benchmarks.harness.WorkMismatch`). Rows/s from the seconds measured inside each
process; peak: the whole process tree's RSS (children included, absolute; pages a child shares
with the root counted once), sampled every 10 ms or, while large children make reading slow,
less often.

    python -m benchmarks.preprocess_terabyte --scale small --dlrm DLRM_CHECKOUT \\
        --dlrm-python DLRM_VENV/bin/python

where DLRM_CHECKOUT is `git clone https://github.com/facebookresearch/dlrm` and DLRM_VENV a venv
with `pip install "numpy<2"`. Without ``--dlrm`` only lit_dlrm's rows are measured. Day files and
caches go to a temporary directory (``TMPDIR``). Also run by ``python -m benchmarks.run --only
preprocess_terabyte`` (same options).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    OURS,
    REF,
    REPO,
    SLOW_REPEATS,
    Sample,
    WorkMismatch,
    alternate,
    check_same_work,
    compare,
    main_for,
    single,
)
from benchmarks.memory import run_measured

MAX_IND_RANGE = 40_000_000  # MLPerf's
NOTES = (
    "ratio: of the medians; > 1 means lit_dlrm is better (lit_dlrm / reference, rows/s). Every "
    "run is a fresh process; rows/s from the seconds measured inside it; peak MiB: the whole "
    "process tree's RSS (absolute, children included, pages a child shares with the root "
    "counted once), sampled every >= 10 ms. Every run of every "
    "side is checked to have written the same labels, dense integers and ids; a run that did not "
    "fails the benchmark."
)
# scale: (day files, the last one test/val; rows per day; the generator's table cap)
SCALES = {
    "tiny": (2, 500, 2_000),
    "small": (4, 50_000, 100_000),
    "kaggle": (4, 500_000, 2_000_000),
    # the capacity check: Terabyte's 24 day files, 1M rows each (run without --dlrm: dlrm's
    # serial path would take half an hour per run)
    "large": (24, 1_000_000, 4_000_000),
}

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


def lit_child(days_dir: str, cache: str, workers: str) -> None:
    """The lit_dlrm side, in its own process: prints {"seconds", "rows", "dir"} as JSON."""
    from lit_dlrm.data.preprocess import PreprocessOptions
    from lit_dlrm.data.terabyte import cached_terabyte

    t = time.perf_counter()
    opts = PreprocessOptions(max_ind_range=MAX_IND_RANGE)
    d, meta = cached_terabyte(days_dir, cache, opts, workers=int(workers), progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "rows": meta["rows"], "dir": str(d)}))


def digest(label, dense, sparse) -> str:
    """What a side produced: its labels, dense integers and ids, as int64."""
    h = hashlib.sha1()
    for array in (label, dense, sparse):
        h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()


def add_options(parser: argparse.ArgumentParser) -> list[str]:
    """This benchmark's own options (for :func:`benchmarks.harness.main_for` and
    ``benchmarks.run``); returns their ``dest`` names."""
    group = parser.add_argument_group("preprocess_terabyte")
    actions = [
        group.add_argument(
            "--workers", type=int, default=os.cpu_count() or 1, help="lit_dlrm's N workers"
        ),
        group.add_argument("--dlrm", default=None, help="a facebookresearch/dlrm checkout"),
        group.add_argument(
            "--dlrm-python", default="python3", help="a Python with numpy<2 for dlrm's code"
        ),
    ]
    return [a.dest for a in actions]


def run(
    scale: str = "small",
    repeats: int | None = None,
    workers: int | None = None,
    dlrm: str | None = None,
    dlrm_python: str = "python3",
) -> list[dict]:
    """lit_dlrm (1 and ``workers`` workers) against dlrm's serial and multiprocessing Terabyte
    preprocessing (lit_dlrm alone without ``dlrm``). ValueError names a bad ``dlrm`` or
    ``workers``; WorkMismatch when a run's arrays differ from the first run's."""
    from lit_dlrm.data.terabyte import PARTS, write_days

    # the capacity check runs once: it is about memory and disk, and takes minutes per side
    repeats = repeats or {**SLOW_REPEATS, "large": 1}[scale]
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {workers}")
    if dlrm and not (Path(dlrm) / "data_utils.py").is_file():
        raise ValueError(f"--dlrm: {dlrm} has no data_utils.py (a facebookresearch/dlrm clone?)")
    days, rows_per_day, max_table_size = SCALES[scale]
    rows = days * rows_per_day
    with tempfile.TemporaryDirectory(prefix="preprocess-terabyte-") as tmp:
        work = Path(tmp)
        raw = work / "raw"
        write_days(raw, days=days, rows_per_day=rows_per_day, max_table_size=max_table_size)
        raw_mib = sum(p.stat().st_size for p in raw.iterdir()) / 2**20

        def fresh_days() -> Path:
            """A new directory of hard links to the day files (dlrm writes beside them)."""
            d = Path(tempfile.mkdtemp(dir=work, prefix="days-"))
            for p in raw.iterdir():
                os.link(p, d / p.name)
            return d

        def lit(n: int):
            def one() -> Sample:
                days_dir = fresh_days()
                cmd = [sys.executable, "-m", "benchmarks.preprocess_terabyte", "--child"]
                out, _, peak = run_measured(
                    cmd + [str(days_dir), str(days_dir / "cache"), str(n)], REPO
                )
                res = json.loads(out.decode().strip().splitlines()[-1])
                if res["rows"] != rows:
                    raise WorkMismatch(f"lit_dlrm, {n} worker(s): kept {res['rows']} of {rows}")
                cache = Path(res["dir"])
                names = [cache / f"{k}.npy" for k in ("label", "dense", "sparse")]
                arrays = [np.load(name) for name in names]
                if (days_dir / "cache" / PARTS).exists():
                    raise WorkMismatch(f"lit_dlrm, {n} worker(s): left {PARTS}/ behind")
                cache_bytes.add(sum(name.stat().st_size for name in names))
                shutil.rmtree(days_dir)
                return Sample(rows / res["seconds"], peak.rss_mib, digest(*arrays))

            return one

        def reference(multiprocessing: bool):
            def one() -> Sample:
                days_dir = fresh_days()
                env = {**os.environ, "PYTHONPATH": str(Path(dlrm).resolve())}
                cmd = [dlrm_python, "-c", DLRM_CHILD, str(days_dir), str(days)]
                cmd += [str(MAX_IND_RANGE), "1" if multiprocessing else "0"]
                _, err, peak = run_measured(cmd, REPO, env=env, stdout=subprocess.DEVNULL)
                seconds = json.loads(err.decode().strip().splitlines()[-1])["seconds"]
                with np.load(days_dir / "terabyte_processed.npz") as z:
                    work_digest = digest(z["y"], z["X_int"], z["X_cat"])
                shutil.rmtree(days_dir)
                return Sample(rows / seconds, peak.rss_mib, work_digest)

            return one

        cache_bytes: set[int] = set()
        sides = {"lit 1": lit(1), f"lit {workers}": lit(workers)}
        if dlrm:
            sides.update({"dlrm serial": reference(False), "dlrm mp": reference(True)})
        samples = alternate(sides, repeats)
        check_same_work(
            "Terabyte preprocessing", samples, what="the same labels, dense integers and ids"
        )
    data = (
        f"{days} synthetic day files x {rows_per_day:,} rows ({raw_mib:,.1f} MiB), "
        f"max_ind_range {MAX_IND_RANGE:,}; each run a fresh process; peak: the process tree's "
        "RSS (absolute, children included, shared pages counted once, sampled every >= 10 ms); "
        "lit_dlrm's cache: "
        f"{max(cache_bytes) / rows:.2f} bytes a row (label, dense, sparse .npy), parts removed"
    )
    table = []
    for n, ref, label in ((1, "dlrm serial", "serial"), (workers, "dlrm mp", "multiprocessing")):
        stage = f"Terabyte preprocessing, lit_dlrm {n} worker(s)"
        if dlrm:
            both = {OURS: samples[f"lit {n}"], REF: samples[ref]}
            stage += f" vs dlrm data_utils {label}"
            if ref == "dlrm mp":
                stage += f" ({days} processes)"
            table.append(compare(stage, "rows/s", both, better="higher", note=data))
        elif not table or n != 1:
            table.append(single(stage, "rows/s", samples[f"lit {n}"], note=data + "; no --dlrm"))
    return table


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # one lit_dlrm run, started by run()
        lit_child(*argv[1:])
        return
    main_for(
        "preprocess_terabyte",
        run,
        argv,
        __doc__.splitlines()[0],
        sorted(SCALES),
        add_options,
        NOTES,
    )


if __name__ == "__main__":
    main()
