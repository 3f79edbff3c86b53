"""The whole job on a Kaggle-shaped ``train.txt``: write it, preprocess, train, sweep.

    python -m benchmarks.end_to_end --lines 2000000     # a rehearsal, minutes
    python -m benchmarks.end_to_end                     # Kaggle's 45,840,617 lines, hours
    python -m benchmarks.end_to_end --stages write preprocess train   # the sweep left for later
    python -m benchmarks.end_to_end --synthetic         # the quick start's job, floor, reference

Each stage is one command (the file: ``python -m lit_dlrm.data.synthetic write``; the cache:
``CriteoDataModule.prepare_data``; training: ``scripts/train.py`` with ``configs/kaggle.yaml``;
the sweep: ``scripts/sweep.py`` with its default grid on the best checkpoint, ``--sweep-args``
added; the floor: ``benchmarks/sweep_floor.py`` on that checkpoint, so that the results give the
sweep's time over F, its tests times one plain forward over the test split; the reference:
``benchmarks/reference_point.py``, the reference approach's own points on that checkpoint, at
``--reference-levels``, so that they give its 60 points' time, set beside each sweep that ran
them with the zip), run in ``--work``
(default ``benchmarks/out/end_to_end_<lines>``) with its output in ``<stage>.log``. Measured per
stage: wall time, the peak resident memory of its process tree and the peak of its anonymous part
(what the processes allocated, the mapped cache left out; pages a worker shares with the root
process counted once: :func:`benchmarks.memory.tree_memory_mib`) and the disk ``--work`` holds
after it. A finished stage's row goes to ``<work>/stages.json`` with its date and commit and is
not run again, so a stopped run goes on stage by stage; training goes on from its
``last.ckpt``, the sweep and the reference from their finished points, and such a row says
``resumed`` (its time is the last execution's only). A second sweep of the same checkpoint is
another ``--sweep-name`` with its ``--sweep-args`` (``--stages sweep floor --sweep-name
sweep_no_zip --sweep-args=--compression.reference_zip=false``: the sweep the floor goal is
about); the floor summary covers every sweep. Writes ``benchmarks/results/end_to_end_<lines>.md``
(``kaggle_end_to_end.md`` at full size). ``--synthetic`` runs the README's quick start instead:
``scripts/train.py`` and ``scripts/sweep.py`` with their defaults (the synthetic data generated
into ``--work``, default ``benchmarks/out/end_to_end_synthetic``), then the floor and the
reference; it writes ``end_to_end_synthetic.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO, RESULTS, command_line, fmt, git_commit, write_table
from benchmarks.memory import run_measured
from benchmarks.reference_point import point_seconds
from benchmarks.sweep_floor import tests_run
from lit_dlrm.checkpoint import latest_checkpoint
from lit_dlrm.data.kaggle import KAGGLE_TRAIN_ROWS
from lit_dlrm.paths import write_json
from lit_dlrm.sweep.grid import DEFAULTS
from lit_dlrm.sweep.results import FORWARD_TIME_CSV, METADATA_CSV, METRICS_CSV, read_table

STAGES = ("write", "preprocess", "train", "sweep", "floor", "reference")
COLUMNS = ["stage", "wall_s", "peak_rss_mib", "peak_anon_mib", "disk_gib", "resumed", "date"]
COLUMNS += ["commit", "command"]
FLOOR = "floor.json"  # what the floor stage writes in the work directory
REFERENCE = "reference.json"  # what the reference stage writes there
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def disk_gib(directory: Path) -> float:
    """Bytes of the files under ``directory``, in GiB."""
    total = sum(
        (Path(root) / name).stat().st_size
        for root, _, names in os.walk(directory)
        for name in names
    )
    return total / 2**30


def shown(cmd: list[str], work: Path) -> str:
    """``cmd`` as the results file shows it: ``python`` for this interpreter, ``$WORK`` for the
    work directory (no path of this machine)."""
    return " ".join(cmd).replace(sys.executable, "python").replace(str(work), "$WORK")


def commands(
    work: Path, lines: int, train_steps: int | None, synthetic: bool = False
) -> dict[str, list[str]]:
    """The command lines of the stages before the sweep, run from the repository root."""
    py, text, cache = sys.executable, work / "train.txt", work / "cache"
    data = ([] if synthetic else [f"--data.path={text}"]) + [f"--data.cache_dir={cache}"]
    runs = work / "runs"
    train = [py, "scripts/train.py"]
    if not synthetic:
        train += ["--config", "configs/train.yaml", "--config", "configs/kaggle.yaml"]
    train += [*data, f"--trainer.logger.init_args.save_dir={runs}", *QUIET]
    if train_steps is not None:
        train.append(f"--trainer.max_steps={train_steps}")
    last = runs / "train" / "version_0" / "checkpoints" / "last.ckpt"
    if last.is_file():
        train.append(f"--ckpt_path={last}")
    prepare = "from lit_dlrm.data import CriteoDataModule as D; import sys; "
    prepare += "D(source='kaggle', path=sys.argv[1], cache_dir=sys.argv[2]).prepare_data()"
    return {
        "write": [py, "-m", "lit_dlrm.data.synthetic", "write", str(text), f"--lines={lines}"],
        "preprocess": [py, "-c", prepare, str(text), str(cache)],
        "train": train,
    }


def sweep_commands(
    work: Path, sweep_args: list[str], name: str, reference_levels: list[float] | None = None
) -> dict[str, list[str]]:
    """The sweep of the training run's best checkpoint into ``work / name`` (its data options
    come with it; then ``sweep_args``), the floor and the reference approach's points (at
    ``reference_levels``, None: benchmarks/reference_point.py's) measured on the same
    checkpoint."""
    best = latest_checkpoint(work / "runs" / "train")
    sweep = [sys.executable, "scripts/sweep.py", f"--ckpt_path={best}"]
    sweep += [f"--out_dir={work / name}", *QUIET, *sweep_args]
    floor = [sys.executable, "-m", "benchmarks.sweep_floor", str(best)]
    reference = [sys.executable, "-m", "benchmarks.reference_point", str(best)]
    if reference_levels:
        reference += ["--levels", *map(str, reference_levels)]
    return {
        "sweep": sweep,
        "floor": [*floor, f"--out={work / FLOOR}"],
        "reference": [*reference, f"--out={work / REFERENCE}"],
    }


def floor_summary(work: Path, rows: dict[str, dict]) -> str:
    """Each sweep's time over its floor F (its tests x one plain forward over the test split),
    once the floor is measured; else empty."""
    if not (work / FLOOR).is_file():
        return ""
    floor = json.loads((work / FLOOR).read_text())
    text = (
        f"Floor: one plain torch.no_grad forward over the test split ({floor['rows']:,} rows, "
        f"batch {floor['batch_size']:,}, {floor['threads']} threads) took "
        f"{floor['forward_s']:.2f} s (median of {floor['repeats']}, [{floor['min_s']:.2f}, "
        f"{floor['max_s']:.2f}])."
    )
    for name in (k for k in rows if k.startswith("sweep")):
        tests = tests_run(work / name)
        f = tests * floor["forward_s"]
        text += (
            f" `{name}` ran {tests} tests: F = {f:,.0f} s, and it took "
            f"{rows[name]['wall_s'] / f:.2f} F."
        )
    return text


def reference_summary(work: Path, rows: dict[str, dict]) -> str:
    """The reference approach's time (benchmarks/reference_point.py) against each sweep that ran
    its points with the zip: the reference's time for the points of the sweep it runs, each
    from its measured point (:func:`benchmarks.reference_point.point_seconds`), over the sweep's
    wall time, with the sweep's timing protocol beside it (the reference times 99 runs of 16,384
    rows per path); empty until all its points are measured (a stopped reference stage leaves
    them without ``grid_s``). Where a sweep ran a measured point, both AUCs must agree within
    1e-3 (blocks tied at the cut may differ), or AssertionError: the same models."""
    ref = json.loads((work / REFERENCE).read_text()) if (work / REFERENCE).is_file() else {}
    if "grid_s" not in ref:
        return ""
    points = ref["points"]
    keys = ("sparsify_s", "zip_s", "test_s", "forward_s", "point_s")
    steps = {k: sum(p[k] for p in points) / len(points) for k in keys}
    levels = ", ".join(f"{level:g}" for level in ref["levels"])
    text = (
        f"Reference approach (benchmarks/reference_point.py, {ref['test_rows']:,} test rows, "
        f"{ref['workers']} loader workers, {ref['threads']} threads): {len(points)} points "
        f"measured (its 3 series at levels {levels}), {steps['point_s']:,.0f} s a point on "
        f"average (sparsify {fmt(steps['sparsify_s'])} s, torch.save + zip "
        f"{fmt(steps['zip_s'])} s, test loop {fmt(steps['test_s'])} s, 2 x 100 forward passes "
        f"{fmt(steps['forward_s'])} s); "
        f"its {ref['grid_points']} points: {ref['grid_s']:,.0f} s."
    )
    measured = {(p["norm"], p["sparse_block_shape"], p["sparsity_level"]): p for p in points}
    for name in (k for k in rows if k.startswith("sweep")):
        zipped = read_table(work / name, METADATA_CSV).zip_file_size.astype(str)
        if zipped.isin(["", "nan"]).any():
            continue  # the reference's zip left out: not the reference's columns
        metrics = read_table(work / name, METRICS_CSV)
        for column, value in DEFAULTS.items():  # the main grid's rows
            metrics = metrics[metrics[column] == value]
        seconds, diffs = [], []
        for row in metrics.itertuples():
            point = (row.norm, row.sparse_block_shape, round(float(row.sparsity_level), 9))
            s = point_seconds(ref, *point)
            seconds += [] if s is None else [s]
            if point in measured:
                diffs.append(abs(float(row.roc_auc) - measured[point]["roc_auc"]))
        if not seconds:
            continue  # none of the reference's points
        if diffs and max(diffs) > 1e-3:
            raise AssertionError(f"{name}: AUC differs from the reference's by {max(diffs):.4f}")
        wall = rows[name]["wall_s"]
        timed = read_table(work / name, FORWARD_TIME_CSV).iloc[0]
        text += (
            f" `{name}` ran {len(seconds)} of the reference's points with its columns in "
            f"{wall:,.0f} s (its forward times: {int(timed.repeats)} runs of "
            f"{int(timed.batch_size):,} rows per path); the reference takes "
            f"{sum(seconds):,.0f} s for them: {sum(seconds) / wall:.1f}x"
        )
        if diffs:
            text += f" (AUC at its {len(diffs)} measured points within {max(diffs):.1e})"
        text += "."
    return text


def run(
    lines: int,
    work: Path,
    train_steps: int | None,
    stages: tuple[str, ...] = STAGES,
    sweep_args: tuple[str, ...] = (),
    sweep_name: str = "sweep",
    synthetic: bool = False,
    reference_levels: list[float] | None = None,
) -> dict[str, dict]:
    """Run those of ``stages`` not yet done in ``work``, the sweep as ``sweep_name`` (its row,
    log and out_dir); the row of every finished stage."""
    work.mkdir(parents=True, exist_ok=True)
    record = work / "stages.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    for stage in STAGES:
        key = sweep_name if stage == "sweep" else stage
        if key in done or stage not in stages:
            continue
        if stage in ("sweep", "floor", "reference"):
            cmd = sweep_commands(work, list(sweep_args), sweep_name, reference_levels)[stage]
        else:
            cmd = commands(work, lines, train_steps, synthetic)[stage]
        resumed = (
            (stage == "train" and "--ckpt_path" in " ".join(cmd))
            or (stage == "sweep" and (work / sweep_name / METRICS_CSV).is_file())
            or (stage == "reference" and (work / REFERENCE).is_file())
        )
        print(f"{key}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        with open(work / f"{key}.log", "ab") as log:
            t0 = time.perf_counter()
            _, _, peak = run_measured(cmd, REPO, stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
        done[key] = {
            "stage": key,
            "wall_s": round(wall, 1),
            "peak_rss_mib": round(peak.rss_mib),
            "peak_anon_mib": round(peak.anon_mib),
            "disk_gib": round(disk_gib(work), 2),
            "resumed": resumed,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "commit": git_commit(),
            "command": shown(cmd, work),
        }
        write_json(record, done)
    return done


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=None, help="default: Kaggle's")
    parser.add_argument("--work", type=Path, default=None, help="where the stages' files go")
    parser.add_argument("--train-steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all"
    )
    parser.add_argument(
        "--sweep-args", default="", help="further options of scripts/sweep.py, in one string"
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="the quick start's job on the synthetic default (stages train, sweep, floor)",
    )
    parser.add_argument(
        "--sweep-name",
        default="sweep",
        help="the sweep's row and out_dir (a second sweep of the same checkpoint: another name)",
    )
    parser.add_argument(
        "--reference-levels",
        type=float,
        nargs="+",
        default=None,
        help="the levels of the reference's measured points (default: reference_point.py's)",
    )
    args = parser.parse_args(argv)
    if args.synthetic:  # no file: the stages from training on
        named = args.stages != list(STAGES) and {"write", "preprocess"} & set(args.stages)
        if args.lines is not None or named:
            parser.error("--lines, --stages write/preprocess: there is no file with --synthetic")
        args.stages = [s for s in args.stages if s not in ("write", "preprocess")]
    args.lines = KAGGLE_TRAIN_ROWS if args.lines is None else args.lines
    if args.lines < 1:
        parser.error(f"--lines: expected >= 1, got {args.lines}")
    suffix = "synthetic" if args.synthetic else args.lines
    work = args.work or REPO / "benchmarks" / "out" / f"end_to_end_{suffix}"
    work = work.resolve()
    if not args.sweep_name.startswith("sweep") or Path(args.sweep_name).name != args.sweep_name:
        parser.error(f"--sweep-name: expected a file name starting 'sweep', got {args.sweep_name}")
    sweep_args = shlex.split(args.sweep_args)
    rows = run(
        args.lines,
        work,
        args.train_steps,
        args.stages,
        sweep_args,
        args.sweep_name,
        args.synthetic,
        args.reference_levels,
    )
    full = not args.synthetic and args.lines == KAGGLE_TRAIN_ROWS
    stem = "kaggle_end_to_end" if full else f"end_to_end_{suffix}"
    what = (
        "The README's quick start (its two commands with their defaults, the synthetic data "
        "generated by the first)"
        if args.synthetic
        else f"A Kaggle-shaped train.txt of {args.lines:,} lines"
    )
    notes = (
        f"{what} through the whole job on this machine;"
        " each stage one command (in the row; $WORK: the --work directory), timed in one "
        "execution unless `resumed`; peak: the process tree's RSS (the pages of the memory-mapped "
        "cache it read included), and its anonymous part, what the processes allocated (RssAnon); "
        "with workers, the root process's plus each worker's private pages (what a worker "
        "shares with the root counted once); "
        "disk: what $WORK holds after "
        "the stage; floor: the sweep's floor measured on its checkpoint "
        "(benchmarks/sweep_floor.py)."
    )
    summaries = [floor_summary(work, rows), reference_summary(work, rows)]
    notes = " ".join(filter(None, [notes, *summaries]))
    command = command_line("benchmarks.end_to_end", argv)
    for path, name in ((args.work, "$WORK"), (args.out_dir, "$OUT")):
        if path is not None and path != RESULTS:  # no path of this machine in the results
            command = command.replace(str(path), name)
    order = [*STAGES[:3], *(k for k in rows if k.startswith("sweep")), *STAGES[4:]]
    table = [rows[k] for k in order if k in rows]
    title = (
        "end to end, the synthetic default"
        if args.synthetic
        else f"end to end, {args.lines:,} lines"
    )
    print(write_table(stem, title, table, COLUMNS, command, notes, args.out_dir))


if __name__ == "__main__":
    main()
