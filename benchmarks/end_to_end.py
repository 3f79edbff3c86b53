"""The whole job on a Kaggle-shaped ``train.txt``: write it, preprocess, train, sweep.

    python -m benchmarks.end_to_end --lines 2000000     # a rehearsal, minutes
    python -m benchmarks.end_to_end                     # Kaggle's 45,840,617 lines, hours
    python -m benchmarks.end_to_end --stages write preprocess train   # the sweep left for later

Each stage is one command (the file: ``python -m lit_dlrm.data.synthetic write``; the cache:
``CriteoDataModule.prepare_data``; training: ``scripts/train.py`` with ``configs/kaggle.yaml``;
the sweep: ``scripts/sweep.py`` with its default grid on the best checkpoint), run in ``--work``
(default ``benchmarks/out/end_to_end_<lines>``) with its output in ``<stage>.log``. Measured per
stage: wall time, the peak RSS of its process tree (sampled every 10 ms) and the disk ``--work``
holds after it. A finished stage's row goes to ``<work>/stages.json`` with its date and commit
and is not run again, so a stopped run goes on stage by stage; training goes on from its
``last.ckpt`` and the sweep from its finished points, and such a row says ``resumed`` (its time
is the last execution's only). Writes ``benchmarks/results/end_to_end_<lines>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO, RESULTS, command_line, git_commit, write_table
from benchmarks.memory import run_measured
from lit_dlrm.data.kaggle import KAGGLE_TRAIN_ROWS
from lit_dlrm.paths import atomic_write

STAGES = ("write", "preprocess", "train", "sweep")
COLUMNS = ["stage", "wall_s", "peak_rss_mib", "disk_gib", "resumed", "date", "commit", "command"]
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


def commands(work: Path, lines: int, train_steps: int | None) -> dict[str, list[str]]:
    """The command lines of the stages before the sweep, run from the repository root."""
    py, text, cache = sys.executable, work / "train.txt", work / "cache"
    data = [f"--data.path={text}", f"--data.cache_dir={cache}"]
    runs = work / "runs"
    train = [py, "scripts/train.py", "--config", "configs/train.yaml", "--config"]
    train += ["configs/kaggle.yaml", *data, f"--trainer.logger.init_args.save_dir={runs}", *QUIET]
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


def sweep_command(work: Path) -> list[str]:
    """The sweep of the training run's best checkpoint (its data options come with it)."""
    from lit_dlrm.checkpoint import latest_checkpoint

    best = latest_checkpoint(work / "runs" / "train")
    out = work / "sweep"
    return [sys.executable, "scripts/sweep.py", f"--ckpt_path={best}", f"--out_dir={out}", *QUIET]


def run(
    lines: int, work: Path, train_steps: int | None, stages: tuple[str, ...] = STAGES
) -> list[dict]:
    """Run those of ``stages`` not yet done in ``work``; the rows of every finished stage."""
    work.mkdir(parents=True, exist_ok=True)
    record = work / "stages.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    for stage in STAGES:
        if stage in done or stage not in stages:
            continue
        cmd = sweep_command(work) if stage == "sweep" else commands(work, lines, train_steps)[stage]
        resumed = (stage == "train" and "--ckpt_path" in " ".join(cmd)) or (
            stage == "sweep" and (work / "sweep" / "sparse_model_metrics.csv").is_file()
        )
        print(f"{stage}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        with open(work / f"{stage}.log", "ab") as log:
            t0 = time.perf_counter()
            _, _, peak = run_measured(cmd, REPO, stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
        done[stage] = {
            "stage": stage,
            "wall_s": round(wall, 1),
            "peak_rss_mib": round(peak),
            "disk_gib": round(disk_gib(work), 2),
            "resumed": resumed,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "commit": git_commit(),
            "command": shown(cmd, work),
        }
        atomic_write(record, lambda tmp: tmp.write_text(json.dumps(done, indent=1)))
    return [done[s] for s in STAGES if s in done]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=KAGGLE_TRAIN_ROWS)
    parser.add_argument("--work", type=Path, default=None, help="where the stages' files go")
    parser.add_argument("--train-steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all"
    )
    args = parser.parse_args(argv)
    if args.lines < 1:
        parser.error(f"--lines: expected >= 1, got {args.lines}")
    work = args.work or REPO / "benchmarks" / "out" / f"end_to_end_{args.lines}"
    rows = run(args.lines, work.resolve(), args.train_steps, args.stages)
    stem = "kaggle_end_to_end" if args.lines == KAGGLE_TRAIN_ROWS else f"end_to_end_{args.lines}"
    notes = (
        f"A Kaggle-shaped train.txt of {args.lines:,} lines through the whole job on this machine;"
        " each stage one command (in the row; $WORK: the --work directory), timed in one "
        "execution unless `resumed`; peak: the process tree's RSS; disk: what $WORK holds after "
        "the stage."
    )
    print(
        write_table(
            stem,
            f"end to end, {args.lines:,} lines",
            rows,
            COLUMNS,
            command_line("benchmarks.end_to_end", argv),
            notes,
            args.out_dir,
        )
    )


if __name__ == "__main__":
    main()
