"""The one repetition harness of the benchmarks, and the one results-file writer.

A comparison has two sides (``lit_dlrm`` and ``reference``), each a callable returning a
:class:`Sample`. :func:`alternate` runs them ``repeats`` times in ABBA order (AB, BA, AB, ...), so
that load drifting on a shared machine falls on both alike. :func:`check_same_work` raises
:class:`WorkMismatch` unless every run of both sides produced the same result (masks, zeros
written, metrics, counts), as judged by the comparison's own ``same`` function. :func:`compare`
turns the samples into one row: median with min and max of each side's figure and extra peak
memory, the ratio of the two medians, and whether the target was met.

:func:`write_results` writes ``<stem>.csv`` and ``<stem>.md`` atomically; the Markdown file starts
with a table of the run (command, date, commit and dirty flag, machine, threads, repeats, its own
duration), so that the README block copied from it carries them too.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.memory import peak_rss_mib, reset_peak, rss_mib
from lit_dlrm.paths import atomic_write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OURS, REF = "lit_dlrm", "reference"
# the least repeats the rules allow: 5 where one run takes under a minute, else 3 (tiny: smoke)
REPEATS = {"tiny": 2, "small": 5, "kaggle": 5}
SLOW_REPEATS = {"tiny": 2, "small": 5, "kaggle": 3}  # for stages whose reference side exceeds 1 min
_timed = [0.0]  # seconds in alternate's timed rounds, this process (timed_seconds)
COLUMNS = [
    "benchmark",
    "stage",
    "unit",
    "lit_dlrm",
    "lit_dlrm_min",
    "lit_dlrm_max",
    "reference",
    "reference_min",
    "reference_max",
    "ratio",
    "lit_dlrm_peak_mib",
    "lit_dlrm_peak_mib_min",
    "lit_dlrm_peak_mib_max",
    "reference_peak_mib",
    "reference_peak_mib_min",
    "reference_peak_mib_max",
    "runs",
    "target",
    "note",
]
SHOWN = [
    ("benchmark", "benchmark"),
    ("stage", "stage"),
    ("unit", "unit"),
    ("lit_dlrm", "lit_dlrm"),
    ("reference", "reference"),
    ("ratio", "ratio"),
    ("lit_dlrm_peak_mib", "lit_dlrm peak MiB"),
    ("reference_peak_mib", "reference peak MiB"),
    ("runs", "runs"),
    ("target", "target"),
    ("note", "note"),
]


class WorkMismatch(AssertionError):
    """The sides of a comparison (or two runs of one side) did not do the same work."""


@dataclass
class Sample:
    """One run of one side: ``value`` in the stage's unit, ``peak_mib`` the run's extra peak RSS
    over the RSS before it (None: not measured), ``work`` what it produced (compared by
    :func:`check_same_work`)."""

    value: float
    peak_mib: float | None = None
    work: Any = field(default=None, repr=False)


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """Run ``fn`` -> (its result, wall seconds, extra peak RSS in MiB over the RSS before it, or
    None where the peak cannot be reset). The heap's free pages are handed back first
    (:func:`benchmarks.memory.reset_peak`), so memory that ``fn`` reuses from an earlier run
    counts. Memory held by worker processes is not counted."""
    reset = reset_peak()
    base = rss_mib()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, (max(peak_rss_mib() - base, 0.0) if reset else None)


def timed(fn: Callable[[], Any], work: Callable[[Any], Any] = lambda out: None) -> Sample:
    """A :class:`Sample` of ``fn``'s seconds and extra peak; ``work(result)`` its fingerprint."""
    out, seconds, peak = measured(fn)
    return Sample(seconds, peak, work(out))


def alternate(
    sides: dict[str, Callable[[], Sample]], repeats: int, warmup: int = 0
) -> dict[str, list[Sample]]:
    """Run every side ``repeats`` times, the order reversed every round (ABBA), after ``warmup``
    untimed rounds. Returns each side's samples in run order."""
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            samples[name].append(sides[name]())
            _timed[0] += time.perf_counter() - start
    return samples


def timed_seconds() -> float:
    """Wall seconds this process has spent so far in :func:`alternate`'s timed rounds (every
    side's ``repeats`` runs, their fingerprints included; warm-ups not): what the repeats cost,
    whatever else a benchmark spends on building its inputs and checking them."""
    return _timed[0]


def check_same_work(
    stage: str,
    samples: dict[str, list[Sample]],
    same: Callable[[Any, Any], bool] = lambda a, b: a == b,
    what: str = "equal results",
) -> None:
    """Raise :class:`WorkMismatch` unless every run of every side did the same work as the first
    side's first run, by ``same(first.work, other.work)`` (``what`` says what is compared)."""
    (first_name, first_runs), *_ = samples.items()
    first = first_runs[0].work
    for name, runs in samples.items():
        for i, s in enumerate(runs):
            if not same(first, s.work):
                raise WorkMismatch(
                    f"{stage}: run {i} of {name} did not do the same work as run 0 of "
                    f"{first_name} (expected {what}; got {s.work!r:.200} against {first!r:.200})"
                )


def spread(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """(median, min, max), or Nones when any value is missing."""
    if not values or any(v is None for v in values):
        return None, None, None
    a = np.asarray(values, dtype=float)
    return float(np.median(a)), float(a.min()), float(a.max())


def compare(
    stage: str,
    unit: str,
    samples: dict[str, list[Sample]],
    better: str = "lower",
    target: float | None = None,
    note: str = "",
) -> dict:
    """One row: each side's median, min and max (value and extra peak), the ratio of the medians
    (reference / lit_dlrm where lower is better, lit_dlrm / reference where higher is; > 1:
    lit_dlrm better) and ``target`` (a least ratio) marked met or missed."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better: expected 'lower' or 'higher', got {better!r}")
    row: dict = {"stage": stage, "unit": unit}
    for side in (OURS, REF):
        runs = samples.get(side, [])
        row[side], row[f"{side}_min"], row[f"{side}_max"] = spread([s.value for s in runs])
        peak = f"{side}_peak_mib"
        row[peak], row[f"{peak}_min"], row[f"{peak}_max"] = spread([s.peak_mib for s in runs])
    row["runs"] = max(len(r) for r in samples.values())
    ours, ref = row[OURS], row[REF]
    row["ratio"] = None
    if ours and ref:
        row["ratio"] = ref / ours if better == "lower" else ours / ref
    row["target"] = None
    if target is not None:
        met = row["ratio"] is not None and row["ratio"] >= target
        row["target"] = f"ratio >= {target:g}: {'met' if met else 'missed'}"
    row["note"] = note
    return row


def single(stage: str, unit: str, runs: list[Sample], note: str = "") -> dict:
    """A row of lit_dlrm alone (no reference side)."""
    return compare(stage, unit, {OURS: runs}, note=note)


# ------------------------------------------------------------------------------------ writing


def fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def cell(row: dict, key: str) -> str:
    """A figure as ``median [min, max]`` where it has a spread."""
    median, low, high = row.get(key), row.get(f"{key}_min"), row.get(f"{key}_max")
    if median is None or low is None or (low == high == median):
        return fmt(median)
    return f"{fmt(median)} [{fmt(low)}, {fmt(high)}]"


def markdown_table(rows: list[dict]) -> str:
    keys = [k for k, _ in SHOWN if any(r.get(k) not in (None, "") for r in rows)]
    names = dict(SHOWN)
    lines = ["| " + " | ".join(names[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r, k) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    """``<short sha>`` of the checkout, ``+dirty`` when tracked files differ from it (the
    results files under ``benchmarks/results/`` aside: benchmarks write them as they run)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                f":!{RESULTS.relative_to(REPO)}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return (sha or "unknown") + (" +dirty" if dirty else "")


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's threads and its waited-for children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo) and the vector unit torch's kernels use
    (``AVX2``, ``AVX512``, ...): timings from different CPUs are not comparable."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    name = names[0].strip() if names else platform.processor() or "unknown CPU"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def run_table(
    command: str,
    repeats: int | str | None,
    seconds: float | None,
    cpu: float | None = None,
    parts: Sequence[tuple[str, float, float]] = (),
) -> str:
    """The run's own table: command, date, commit, machine, threads, repeats (None: a measurement
    that is not repeated), duration (wall seconds, and ``cpu`` seconds of all its threads and
    child processes where given) and, for a run of several benchmarks, each one's ``parts``:
    (name, wall seconds, seconds of them in timed rounds, :func:`timed_seconds`)."""
    items = [
        ("command", f"`{command}`"),
        ("date", time.strftime("%Y-%m-%d %H:%M %Z")),
        ("commit", git_commit()),
        (
            "machine",
            f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        ),
    ]
    if repeats is not None:
        items.append(("repeats", f"{repeats} per side, ABBA order; figures: median [min, max]"))
    if seconds is not None:
        cpu_text = "" if cpu is None else f" wall, {cpu:,.0f} s CPU (all threads and workers)"
        items.append(("duration", f"{seconds:,.0f} s{cpu_text}"))
    if parts:
        timed = sum(t for _, _, t in parts)
        each = ", ".join(f"{name} {wall:,.0f} s ({t:,.0f} s)" for name, wall, t in parts)
        items.append(("by benchmark", f"wall (of it in timed runs); {timed:,.0f} s timed: {each}"))
    lines = ["| run | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in items]
    return "\n".join(lines) + "\n"


def command_line(module: str, argv: Sequence[str]) -> str:
    return " ".join(["python -m", module, *map(shlex.quote, argv)])


def write_results(
    stem: str,
    title: str,
    rows: list[dict],
    command: str,
    out_dir: str | os.PathLike | None = RESULTS,
    seconds: float | None = None,
    notes: str = "",
    cpu: float | None = None,
    parts: Sequence[tuple[str, float, float]] = (),
) -> str:
    """The results text (run table, ``notes``, the rows' table); written as ``<stem>.md`` and
    ``<stem>.csv`` (every column of :data:`COLUMNS`) into ``out_dir`` unless it is None. The run
    table's repeats are the rows' ``runs``, as they were run; ``parts`` as for
    :func:`run_table`."""
    runs = sorted({int(r["runs"]) for r in rows if r.get("runs")})
    repeats = (
        None if not runs else runs[0] if len(runs) == 1 else f"{runs[0]}-{runs[-1]} (by row: runs)"
    )
    text = (
        f"# {title}\n\n{run_table(command, repeats, seconds, cpu, parts)}\n"
        + (f"{notes.strip()}\n\n" if notes else "")
        + markdown_table(rows)
    )
    if out_dir is not None:
        save(Path(out_dir), stem, rows, COLUMNS, text)
    return text


def write_table(
    stem: str,
    title: str,
    rows: list[dict],
    columns: list[str],
    command: str,
    notes: str = "",
    out_dir: str | os.PathLike | None = RESULTS,
    shown: list[str] | None = None,
    value: Callable[[Any], str] = fmt,
) -> str:
    """A results file of measurements that are not a side-by-side comparison (one run's metrics
    per row): the run table, ``notes``, ``rows`` as a table of ``shown`` (default: ``columns``)
    cells written by ``value``; ``<stem>.csv`` holds ``columns``. Written unless out_dir is None."""
    shown = shown or columns
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(value(r.get(c)) for c in shown) + " |" for r in rows]
    text = (
        f"# {title}\n\n{run_table(command, None, None)}\n"
        + (f"{notes.strip()}\n\n" if notes else "")
        + "\n".join(lines)
        + "\n"
    )
    if out_dir is not None:
        save(Path(out_dir), stem, rows, columns, text)
    return text


def save(out_dir: Path, stem: str, rows: list[dict], columns: list[str], text: str) -> None:
    """``<stem>.csv`` (``columns`` of ``rows``) and ``<stem>.md`` (``text``), each atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / f"{stem}.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    atomic_write(out_dir / f"{stem}.md", lambda tmp: tmp.write_text(text))


NOTES = (
    "ratio: of the medians; > 1 means lit_dlrm is better (reference / lit_dlrm for times, "
    "lit_dlrm / reference for rates). Peak MiB: each run's peak RSS over its RSS just before it, "
    "after the heap's free pages were handed back to the OS (`malloc_trim(0)`) and the peak "
    "reset (`/proc/self/clear_refs`): the memory the run touched beyond what was live before it, "
    "in this process only (loader workers not counted). "
    "Both sides of every row are checked to have done the same work; a run that did not "
    "fails the benchmark."
)


def main_for(
    name: str,
    run: Callable[[str, int], list[dict]],
    argv: Sequence[str] | None,
    description: str,
    scales: Sequence[str] = ("tiny", "small", "kaggle"),
    options: Callable[[argparse.ArgumentParser], list[str]] | None = None,
    notes: str | None = None,
) -> str:
    """The command line of one benchmark: ``--scale``, ``--repeats``, ``--out-dir``, and the
    benchmark's own ``options`` (a function adding them to the parser and returning their
    ``dest`` names, passed to ``run`` as keywords); runs it and writes ``<name>_<scale>.md``, with
    ``notes`` (default :data:`NOTES`) above its table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=list(scales), default="small")
    parser.add_argument("--repeats", type=int, default=None, help="default: per scale (>= 3)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    extra = options(parser) if options else []
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    start, cpu = time.perf_counter(), cpu_seconds()
    kwargs = {dest: getattr(args, dest) for dest in extra}
    rows = [{"benchmark": name, **r} for r in run(args.scale, args.repeats, **kwargs)]
    text = write_results(
        f"{name}_{args.scale}",
        f"{name}, scale `{args.scale}`",
        rows,
        command_line(f"benchmarks.{name}", argv),
        args.out_dir,
        time.perf_counter() - start,
        NOTES if notes is None else notes,
        cpu_seconds() - cpu,
    )
    print(text)
    return text
