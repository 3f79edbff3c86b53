"""A sweep killed twice at random moments, then run again: it tests only the missing points and
its tables equal those of a sweep never interrupted.

    python -m benchmarks.sweep_resume --work benchmarks/out/end_to_end_2000000

On the best checkpoint of an :mod:`benchmarks.end_to_end` work directory, two sweeps with the
same options (the default grid, then ``--sweep-args``): ``<work>/resume/whole`` runs to the end
in one execution; ``<work>/resume/killed`` is SIGKILLed (its whole process group) twice, each time
once its tables hold a number of points drawn from a seeded RNG plus a random fraction of a point's
time (so a kill may land inside a point), then run again to the end. Checked: each execution
tests exactly the points its tables lacked (the progress bar's total) and the last leaves none;
every table's rows equal the uninterrupted sweep's in the point, metric and size columns (the
columns of seconds aside). Writes ``benchmarks/results/sweep_resume_<lines>.md``; fails when a
check does not hold.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.harness import REPO, RESULTS, command_line, write_table
from lit_dlrm.checkpoint import latest_checkpoint
from lit_dlrm.sweep.results import (
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    read_table,
    rows_tested,
)

TABLES = (METRICS_CSV, METADATA_CSV, FORWARD_TIME_CSV)
QUIET = ["--trainer.enable_model_summary=false"]
TIMED = re.compile(r"(_s|_sec|time_taken|path)$")  # seconds, and kept files' paths: not compared
COLUMNS = ["execution", "killed_after", "tested_before", "set_out_to_test", "missing"]
COLUMNS += ["tested_after", "rows_after"]


def sweep_command(ckpt: Path, out: Path, sweep_args: list[str]) -> list[str]:
    cmd = [sys.executable, "scripts/sweep.py", f"--ckpt_path={ckpt}", f"--out_dir={out}"]
    return [*cmd, *QUIET, *sweep_args]


def tested(out: Path) -> int:
    """Points of ``out`` tested so far (a row in every table; not counting the rows a sweep
    copies at its end for points of identical masks)."""
    return min(len(rows_tested(read_table(out, name))) for name in TABLES)


def execute(cmd: list[str], out: Path, log: Path, kill_after: int | None, rng: random.Random):
    """Run ``cmd``; once ``out`` holds ``kill_after`` tested points, wait a random part of a
    point's time, then SIGKILL its process group (None: run to the end). Returns the progress
    bar's total: the points this execution set out to test."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            seen = [(time.perf_counter(), tested(out))]  # when each new point was on disk
            while proc.poll() is None:
                if tested(out) > seen[-1][1]:
                    seen.append((time.perf_counter(), tested(out)))
                if kill_after is not None and seen[-1][1] >= kill_after:
                    # a point's time: between points seen done, else since the start
                    (t0, n0), (t1, n1) = seen[min(1, len(seen) - 2)], seen[-1]
                    time.sleep(rng.uniform(0, (t1 - t0) / max(n1 - n0, 1)))
                    break
                time.sleep(0.1)
        finally:  # killed as planned, or because this process failed: never left running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if kill_after is None and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {log}")
    totals = re.findall(r"sweep:\s+\d+%\|[^|]*\| \d+/(\d+)", log.read_text(errors="replace"))
    return int(totals[0]) if totals else 0


def compared(out: Path, name: str) -> pd.DataFrame:
    """``out``'s table ``name`` without its columns of seconds."""
    table = read_table(out, name)
    return table[[c for c in table.columns if not TIMED.search(c)]].reset_index(drop=True)


def run(work: Path, sweep_args: list[str], seed: int) -> list[dict]:
    """The two sweeps (the uninterrupted one kept if already done), one row per execution of
    the killed one; AssertionError when an execution tested other points than those missing,
    or the tables differ."""
    ckpt = latest_checkpoint(work / "runs" / "train")
    whole, killed = work / "resume" / "whole", work / "resume" / "killed"
    whole.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if not (whole / "results.csv").is_file():  # written last: the sweep ended
        execute(sweep_command(ckpt, whole, sweep_args), whole, whole / "run.log", None, rng)
    tests = tested(whole)
    if killed.exists():
        shutil.rmtree(killed)
    killed.mkdir(parents=True)
    rows = []
    for i, kill_after in enumerate([*sorted(rng.sample(range(1, tests - 1), 2)), None]):
        before = tested(killed)
        log = killed / f"execution_{i + 1}.log"
        total = execute(sweep_command(ckpt, killed, sweep_args), killed, log, kill_after, rng)
        row = {"execution": i + 1, "killed_after": kill_after, "tested_before": before}
        row |= {"set_out_to_test": total, "missing": tests - before}
        row |= {"tested_after": tested(killed), "rows_after": len(read_table(killed, METRICS_CSV))}
        rows.append(row)
        if total != tests - before:
            raise AssertionError(
                f"execution {i + 1} set out to test {total} points, not the "
                f"{tests - before} missing"
            )
    for name in TABLES:
        a, b = compared(whole, name), compared(killed, name)
        if not a.equals(b):
            raise AssertionError(f"{name}: the killed sweep's table differs from the whole one's")
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="an end_to_end work directory")
    parser.add_argument("--sweep-args", default="", help="further options of scripts/sweep.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = run(args.work.resolve(), shlex.split(args.sweep_args), args.seed)
    lines = args.work.resolve().name.removeprefix("end_to_end_")
    notes = (
        f"Two sweeps of {args.work.name}'s best checkpoint with the same options: one never "
        "interrupted; one SIGKILLed twice (once its tables held `killed_after` tested points and a "
        "random part of a point's time more had passed), then run to the end. Each execution set "
        "out to test exactly the points missing, and every table (point, metric and size columns; "
        "seconds aside) equals the uninterrupted sweep's: checked, the run fails otherwise."
    )
    command = command_line("benchmarks.sweep_resume", argv)
    text = write_table(
        f"sweep_resume_{lines}",
        f"sweep resume, {lines} lines",
        rows,
        COLUMNS,
        command,
        notes,
        args.out_dir,
    )
    print(text)


if __name__ == "__main__":
    main()
