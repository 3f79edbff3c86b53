"""Every benchmark side by side with the reference approach, one results file per run.

    python -m benchmarks.run --scale small                      # all of them: run_small.md
    python -m benchmarks.run --scale kaggle --only sparsify     # one piece: run_kaggle_sparsify.md
    python -m benchmarks.readme                                 # README blocks from the files

``first_batch`` and ``preprocess_terabyte`` (the Terabyte and processed-format paths) run only
when named in ``--only``; ``preprocess_terabyte``'s own options (``--dlrm``, ``--dlrm-python``,
``--workers``) are accepted here too.

Each stage runs both sides ``repeats`` times in ABBA order and checks that they did the same work
(:mod:`benchmarks.harness`). A run writes one results file, ``run_<scale>.md`` (and ``.csv``), or
``run_<scale>_<names>.md`` with ``--only``, headed by its command, date, commit, machine and its
own duration, and each benchmark's wall time with the part of it spent in timed runs; it never
splices rows of earlier runs. When sparsify, compress, evaluate and compact run together, the
table ends with an estimate of a full sweep from the measured medians:
lit_dlrm's 80 points (56 tests), the reference's 60 (it skips L2 (1, 1)). At the end the README's
result blocks are rewritten from the committed results files (:mod:`benchmarks.readme`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from benchmarks import (
    compact,
    compress,
    evaluate,
    first_batch,
    global_threshold,
    int_lookup,
    preprocess,
    preprocess_terabyte,
    quantize,
    readme,
    sparsify,
    train_throughput,
)
from benchmarks.harness import (
    NOTES,
    RESULTS,
    command_line,
    cpu_seconds,
    timed_seconds,
    write_results,
)
from lit_dlrm.cli import default_config

BENCHMARKS = {
    "preprocess": preprocess.run,
    "train": train_throughput.run,
    "sparsify": sparsify.run,
    "compress": compress.run,
    "global": global_threshold.run,
    "quantize": quantize.run,
    "evaluate": evaluate.run,
    "compact": compact.run,
    "int_lookup": int_lookup.run,
}
# run only when named in --only (not part of a full run)
ON_REQUEST = {"first_batch": first_batch.run, "preprocess_terabyte": preprocess_terabyte.run}
# the benchmarks' own options (a function adding them to the parser, as for harness.main_for)
OPTIONS = {"preprocess_terabyte": preprocess_terabyte.add_options}
# the benchmarks that read sparsify.shared_tables (one build for all, run one after another)
SHARED_TABLES = {"sparsify", "compress", "global", "quantize"}
TESTED_POINTS = 56  # of the sweep's 80: level 0/1 and L2 (1, 1) reuse identical masks


def timed_runs() -> int:
    """The forward runs a sweep point makes per path by default: configs/sweep.yaml's timing
    warm-up plus repeats."""
    timing = yaml.safe_load(Path(default_config("sweep.yaml")).read_text())["timing"]
    return int(timing["warmup"]) + int(timing["repeats"])


def sweep_estimate(rows: list[dict], scale: str) -> list[dict]:
    """A full sweep at this scale from the measured medians, or [] without the stages it needs.

    Per point, lit_dlrm: sparsify (its grid / 80) + zstd_sparse and deflate writes (it measures
    the reference's size too) + one test loop over the test split + its default forward runs
    (:func:`timed_runs`) of the dense, COO and compact forwards + the compact build. Reference:
    its DataNormSparsifier point + deflate + its test loop + 100 runs of the dense and COO
    forwards; 60 points.
    """
    by = {r["stage"]: r for r in rows}
    writes = [r for r in rows if r["benchmark"] == "compress" and r["stage"].endswith(" write")]
    writes = [r for r in writes if "signed" not in r["stage"]]  # zstd on every core, +0.0
    grid = by.get("grid: lit_dlrm 80 points, reference 60")
    loop = by.get("test loop (one grid point)")
    forward = by.get("forward compact L1 (1, 4) 0.5 batch 16384")
    coo = by.get("forward COO L1 (1, 4) 0.5 batch 16384")
    build = by.get("compact build L1 (1, 4) 0.5")
    if not (writes and grid and loop and forward and coo and build):
        return []
    zstd, runs = sum(r["lit_dlrm"] for r in writes) / len(writes), timed_runs()
    deflate = sum(r["reference"] for r in writes) / len(writes)
    test_rows = evaluate.SCALES[scale][1]
    dense_s, coo_s = coo["lit_dlrm"], coo["reference"]
    ours = (
        TESTED_POINTS
        * (
            zstd
            + deflate
            + test_rows / loop["lit_dlrm"]
            + build["lit_dlrm"]
            + runs * (dense_s + coo_s + forward["lit_dlrm"])
        )
        + grid["lit_dlrm"]
    )
    points = sparsify.REFERENCE_POINTS
    theirs = grid["reference"] + points * (
        deflate + test_rows / loop["reference"] + 100 * (dense_s + coo_s)
    )
    return [
        {
            "benchmark": "estimate",
            "stage": f"full sweep: lit_dlrm 80 points ({TESTED_POINTS} tests), reference {points}",
            "unit": "s",
            "lit_dlrm": ours,
            "reference": theirs,
            "ratio": theirs / ours,
            "note": "from the medians above: per point sparsify + deflate (+ zstd_sparse and the "
            "compact tables for lit_dlrm) + one pass over the test split + forward timing "
            f"({runs} runs each for lit_dlrm, 100 for the reference)",
        }
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "small", "kaggle"], default="small")
    parser.add_argument("--only", nargs="+", choices=[*BENCHMARKS, *ON_REQUEST], default=None)
    parser.add_argument("--repeats", type=int, default=None, help="default: per scale (>= 3)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument(
        "--no-readme", action="store_true", help="leave the README's result blocks as they are"
    )
    dests = {name: add(parser) for name, add in OPTIONS.items()}
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    names = args.only or list(BENCHMARKS)
    for name, options in dests.items():
        given = [d for d in options if getattr(args, d) != parser.get_default(d)]
        if given and name not in names:
            flags = ", ".join("--" + d.replace("_", "-") for d in given)
            parser.error(f"{flags}: options of {name}, which this run does not include (--only)")
    start, cpu = time.perf_counter(), cpu_seconds()
    rows: list[dict] = []
    parts: list[tuple[str, float, float]] = []  # (name, wall s, s in timed runs)
    for i, name in enumerate(names):
        t0, c0, timed0 = time.perf_counter(), cpu_seconds(), timed_seconds()
        bench = {**BENCHMARKS, **ON_REQUEST}[name]
        kwargs = {d: getattr(args, d) for d in dests.get(name, [])}
        rows += [{"benchmark": name, **r} for r in bench(args.scale, args.repeats, **kwargs)]
        if not SHARED_TABLES.intersection(names[i + 1 :]):  # none left reads them: free them
            sparsify.shared_tables.cache_clear()
        wall, used, timed = (
            time.perf_counter() - t0,
            cpu_seconds() - c0,
            timed_seconds() - timed0,
        )
        parts.append((name, wall, timed))
        print(
            f"{name}: {wall:.0f} s wall ({timed:.0f} s in timed runs), {used:.0f} s CPU",
            file=sys.stderr,
            flush=True,
        )
    rows += sweep_estimate(rows, args.scale)
    stem = f"run_{args.scale}" + ("" if args.only is None else "_" + "-".join(args.only))
    text = write_results(
        stem,
        f"lit_dlrm vs the reference approach, scale `{args.scale}`",
        rows,
        command_line("benchmarks.run", argv),
        args.out_dir,
        time.perf_counter() - start,
        NOTES,
        cpu_seconds() - cpu,
        parts,
    )
    print(text)
    if not args.no_readme:
        readme.update()
    return rows


if __name__ == "__main__":
    main()
