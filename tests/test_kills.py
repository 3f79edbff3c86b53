"""SIGKILL, then run again: training, preprocessing and the sweep end as if never interrupted.

Every kill is a real SIGKILL of the child's whole process group (``start_new_session``), at a
moment drawn from a seeded RNG relative to what the child is doing (checkpoints written, rows on
disk, a temp file open, the report being drawn), so that the kills land in every phase whatever
the speed of the machine. After each kill every output present must read back completely, and
the resumed run must end where an uninterrupted one ends. The kills are counted and printed.
"""

import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dlrm.checkpoint import AtomicCheckpointIO, load_state_dict
from lit_dlrm.cli import sweep, train
from lit_dlrm.data.preprocess import PreprocessOptions, cached_text, read_meta
from lit_dlrm.sweep.grid import COLUMNS
from lit_dlrm.sweep.results import (
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    REFERENCE_COLUMNS,
    REFERENCE_POINT,
)

SAMPLES = REPO.parent / "shared" / "data" / "criteo-samples"
TIMEOUT = 180  # seconds any one child may take before the test gives up on it

CHILDREN: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread, here and in the children: on two shared cores, OpenMP threads spinning
    for each other made these runs up to 8x slower (the results must not depend on it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_child_left():
    """A test that fails while a child runs does not leave it running."""
    yield
    while CHILDREN:
        proc = CHILDREN.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``args`` in its own process group (so the kill takes its children too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    CHILDREN.append(proc)
    return proc


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group; False if the process finished (successfully) just before."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), proc.returncode
    return proc.returncode == -signal.SIGKILL


def wait_for(proc: subprocess.Popen, ready, log: Path, poll_s: float = 0.002) -> bool:
    """Poll ``ready()`` until true (True) or the process has ended (False)."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            assert proc.returncode == 0, log.read_text()[-3000:]
            return False
        assert time.monotonic() < deadline, f"no progress in {TIMEOUT} s: {log.read_text()[-3000:]}"
        time.sleep(poll_s)
    return True


def report_kills(capsys, what: str, kills: list[str]) -> None:
    with capsys.disabled():
        print(f"\n[test_kills] {what}: {len(kills)} SIGKILL(s): {'; '.join(kills)}")


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_io_writes_beside_the_target_only(tmp_path, monkeypatch):
    # Lightning's own TorchCheckpointIO stages in $TMPDIR: with one it cannot use, it fails.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    stale = target.parent / ".best-epoch00.ckpt.k1ll3d.tmp"  # left by a save that was killed
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    def dies_mid_write(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.ones(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


# ----------------------------------------------------------------------------------------------
# training


def ckpt_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def assert_consistent(checkpoints: Path) -> None:
    """Every checkpoint loads (none truncated), and the best one that last.ckpt names exists."""
    for path in checkpoints.glob("*.ckpt"):
        load_state_dict(path)
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    (best,) = [
        state["best_model_path"]
        for state in last["callbacks"].values()
        if state.get("monitor") == "val/auc"  # other callbacks keep state too
    ]
    assert Path(best).is_file(), f"last.ckpt names {best}, which is gone"


# Runs the training CLI and SIGKILLs it after the second best checkpoint is written (and the first
# superseded), before last.ckpt records that: the one moment where the two callbacks disagree.
KILL_BETWEEN_BEST_AND_LAST = """
import os, signal, sys
from lit_dlrm.checkpoint import AtomicCheckpointIO
from lit_dlrm.cli import train
save, bests = AtomicCheckpointIO.save_checkpoint, []
def save_or_die(self, checkpoint, path, storage_options=None):
    if os.path.basename(path).startswith("best-"):
        bests.append(path)
    elif len(bests) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, checkpoint, path, storage_options)
AtomicCheckpointIO.save_checkpoint = save_or_die
train(sys.argv[1:])
"""


def test_training_killed_twice_resumes_to_the_same_step(tmp_path, tiny_data_args, capsys):
    rng = np.random.default_rng(7)
    options = [
        *tiny_data_args,
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]  # 24 steps per epoch, 4 validations (and last.ckpt) each
    train([*options, f"--trainer.logger.init_args.save_dir={tmp_path / 'whole'}"])
    final_step = ckpt_step(tmp_path / "whole" / "train" / "version_0" / "checkpoints" / "last.ckpt")
    capsys.readouterr()

    options.append(f"--trainer.logger.init_args.save_dir={tmp_path / 'killed'}")
    checkpoints = tmp_path / "killed" / "train" / "version_0" / "checkpoints"
    last = checkpoints / "last.ckpt"
    # 1. Between the best and the last checkpoint of the second validation.
    child = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_BEST_AND_LAST, *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    first_at = ckpt_step(last)
    assert_consistent(checkpoints)  # the best file that last.ckpt names is still there
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 2  # and so is the one written after it
    kills = [f"between the best and the last checkpoint, at step {first_at} of {final_step}"]

    # 2. Resumed, then killed after the 2nd or 3rd of its 7 validations, at a random moment
    # before the next.
    log = tmp_path / "train.log"
    proc = spawn([sys.executable, "scripts/train.py", *options, f"--ckpt_path={last}"], log)
    saves, wanted, inode = [], int(rng.integers(2, 4)), last.stat().st_ino
    while len(saves) < wanted:
        assert wait_for(proc, lambda inode=inode: last.stat().st_ino != inode, log)
        inode = last.stat().st_ino  # each save renames a new file over last.ckpt
        saves.append(time.monotonic())
    time.sleep(rng.uniform(0, 1) * float(np.median(np.diff(saves))))
    assert kill(proc)
    second_at = ckpt_step(last)
    assert first_at < second_at < final_step
    assert_consistent(checkpoints)
    kills.append(f"after validation {wanted} of the resumed run, at step {second_at}")

    # 3. Resumed to the end: in the same version, at the same step as the uninterrupted run.
    train([*options, f"--ckpt_path={last}"])
    out = capsys.readouterr().out
    assert "teacher (Bayes)" in out and re.search(r"^auc +0\.\d{4}", out, re.M)
    best = Path(re.search(r"^best checkpoint: (.+)$", out, re.M).group(1))
    assert sorted(p.name for p in checkpoints.parents[1].iterdir()) == ["version_0"]
    assert ckpt_step(last) == final_step
    assert_consistent(checkpoints)
    assert sorted(checkpoints.iterdir()) == sorted([best, last])  # no untracked best, no temp file
    report_kills(capsys, "training", kills)


# ----------------------------------------------------------------------------------------------
# preprocessing


def arrays(directory: Path) -> dict[str, np.ndarray]:
    meta = read_meta(directory)
    assert meta is not None, f"{directory} looks finished but has no complete meta.json"
    found = {}
    for name, spec in meta["arrays"].items():
        found[name] = np.load(directory / spec["file"], mmap_mode="r")
        assert list(found[name].shape) == spec["shape"] and str(found[name].dtype) == spec["dtype"]
    return found


def test_killed_preprocessing_rebuilds_the_same_cache(tmp_path, capsys):
    rng = np.random.default_rng(11)
    text = SAMPLES.joinpath("train-first1000-stripped.tsv").read_bytes().rstrip(b"\n") + b"\n"
    big = tmp_path / "train.txt"
    big.write_bytes(text * 300)  # 300k real rows, 70 MB: a build of about a second
    options = PreprocessOptions()
    start = time.monotonic()
    whole, _ = cached_text(big, tmp_path / "whole", options, progress=False)
    build_s = time.monotonic() - start
    expected = arrays(whole)

    cache = tmp_path / "cache"
    build = [
        sys.executable,
        "-c",
        "import sys; from lit_dlrm.data.preprocess import PreprocessOptions, cached_text; "
        "cached_text(sys.argv[1], sys.argv[2], PreprocessOptions(), progress=False)",
        str(big),
        str(cache),
    ]
    log = tmp_path / "preprocess.log"
    kills = []
    for _ in range(3):
        stale = set(cache.glob(".tmp-*"))
        proc = spawn(build, log)
        if not wait_for(proc, lambda stale=stale: bool(set(cache.glob(".tmp-*")) - stale), log):
            break
        delay = rng.uniform(0, 0.9) * build_s
        time.sleep(delay)
        if not kill(proc):
            break
        left = [d.name for d in cache.glob(".tmp-*")]
        kills.append(f"{delay:.2f} s into the build{' (left ' + left[0] + ')' if left else ''}")
        for directory in (d for d in cache.iterdir() if d.is_dir()):
            if not directory.name.startswith("."):  # only a complete cache carries its name
                arrays(directory)
            elif (directory / "meta.json").exists():  # and meta.json only ever appears complete
                assert read_meta(directory) is not None
    assert kills
    rerun = subprocess.run(
        build, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )  # not blocked by a lock
    assert rerun.returncode == 0, rerun.stderr
    (built,) = [d for d in cache.iterdir() if d.is_dir()]
    assert (
        built.name == whole.name
        and read_meta(built)["table_sizes"] == read_meta(whole)["table_sizes"]
    )
    got = arrays(built)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    report_kills(capsys, "preprocessing", kills)


# ----------------------------------------------------------------------------------------------
# the sweep

# 8 points, 6 tests: levels 0 and 1 are tested once for both norms, and copied.
SWEEP_GRID = [
    "--sweep.sparsity_level=[0.0, 0.5, 0.9, 1.0]",
    "--sweep.sparse_block_shape=[[1, 4]]",
    "--sweep.studies=[]",
    "--timing.warmup=0",
    "--timing.repeats=2",
    "--timing.batch_size=256",
]
TABLES = [METRICS_CSV, METADATA_CSV, FORWARD_TIME_CSV]
RESULTS_CSV, TENSORBOARD, HPARAMS = "results.csv", "tensorboard", "hparams"
# Columns that depend on the run (wall-clock times, file paths), recognised by name so that
# columns added later are compared unless they are timings or paths.
RUN_DEPENDENT = re.compile(r"(^|_)(s|sec|seconds|time|path)(_|$)")


def stable_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not RUN_DEPENDENT.search(c)]


def read_output(path: Path) -> pd.DataFrame:
    """A CSV output, checked to be whole: a final newline and every row as wide as the header."""
    text = path.read_text()
    assert text.endswith("\n"), f"{path.name}: truncated"
    rows = list(csv.reader(text.splitlines()))
    assert all(len(row) == len(rows[0]) for row in rows), f"{path.name}: a partial row"
    return pd.read_csv(path, dtype={"sparse_block_shape": str, "norm": str}, keep_default_na=False)


def check_outputs(out: Path) -> dict[str, pd.DataFrame]:
    """Every output present (tables, plots, TensorBoard runs) reads back whole, and every
    temporary file is hidden and named after its output, so that none passes for one."""
    tables = {}
    for entry in out.iterdir():
        name = entry.name
        if name.startswith("."):  # scratch space, or an output being written
            assert name == ".scratch" or re.fullmatch(
                r"\.[^.].*\.(csv|png|yaml)\.\w+\.tmp", name
            ), f"stray file {name}"
        elif name in {f"{d}.{swap}" for d in (TENSORBOARD, HPARAMS) for swap in ("tmp", "old")}:
            pass  # the report's own swap directories, beside the output and never inside it
        elif name.endswith(".csv"):
            table = tables[name] = read_output(entry)
            reference = REFERENCE_COLUMNS.get(name, REFERENCE_POINT)  # results.csv: the point first
            assert list(table.columns[: len(reference)]) == reference, name
            key = [c for c in (*COLUMNS, "dlrm_type") if c in table]
            assert not table.duplicated(key).any(), f"{name}: duplicated rows"
        elif name == "config.yaml":  # the sweep's options (lit_dlrm.cli.SaveSweepConfig)
            assert yaml.safe_load(entry.read_text())["out_dir"] == str(out)
        elif name.endswith(".png"):
            with Image.open(entry) as image:
                image.load()  # decodes every byte
        else:
            assert name in (TENSORBOARD, HPARAMS), f"unexpected output {name}"
            for run in entry.iterdir():  # hparams/ also holds its experiment's event file
                assert run.is_file() or len(list(run.iterdir())) == 1, f"{run}: not one event file"
    return tables


def point_keys(table: pd.DataFrame) -> pd.Series:
    """Each row's grid point as one string."""
    return table[[c for c in COLUMNS if c in table]].astype(str).agg("|".join, axis=1)


def complete_points(tables: dict[str, pd.DataFrame]) -> set[str]:
    """Points with their rows in every table (both forward paths for the timings)."""
    if not all(name in tables for name in TABLES):
        return set()
    done = set(point_keys(tables[METRICS_CSV])) & set(point_keys(tables[METADATA_CSV]))
    times = tables[FORWARD_TIME_CSV]
    for kind in ("with_torch_sparse", "without_torch_sparse"):
        done &= set(point_keys(times[times["dlrm_type"] == kind]))
    return done


def assert_kept(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    """Rows of points that were complete before a run are still there, unchanged (not recomputed:
    their timings would differ), and no row was lost."""
    done = complete_points(before)
    for name, old in before.items():
        new = after[name]
        assert set(point_keys(old)) <= set(point_keys(new)), f"{name}: rows lost"
        if name not in TABLES:
            continue
        key = [c for c in (*COLUMNS, "dlrm_type") if c in old]
        old = old[point_keys(old).isin(done)].set_index(key).sort_index()
        new = new[point_keys(new).isin(done)].set_index(key).sort_index()[old.columns]
        pd.testing.assert_frame_equal(
            new, old, check_exact=True, obj=f"{name}: rows of finished points"
        )


def scalars(log_dir: Path) -> dict[str, dict[str, list]]:
    series = {}
    for run in sorted(log_dir.iterdir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        series[run.name] = {
            tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]
            if not RUN_DEPENDENT.search(tag)
        }
    return series


class Trigger:
    """When to kill a sweep process: ``then`` seconds after ``fired(out, names, since)`` first
    holds, where ``names`` lists the output directory now and ``since`` is :func:`state` at
    start."""

    def __init__(self, phase: str, fired, then: float):
        self.phase, self.fired, self.then = phase, fired, then

    def wait(self, proc: subprocess.Popen, out: Path, since: dict, log: Path) -> bool:
        at = None

        def ready():
            nonlocal at
            if at is None and self.fired(out, os.listdir(out), since):
                at = time.monotonic() + self.then
            return at is not None and time.monotonic() >= at

        return wait_for(proc, ready, log, poll_s=0.001)


def metric_rows(out: Path) -> int:
    try:
        return (out / METRICS_CSV).read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


def state(out: Path) -> dict:
    """What a trigger compares against: the time, the rows written, the files present."""
    return {"time": time.time(), "rows": metric_rows(out), "names": set(os.listdir(out))}


def written_since(path: Path, since: dict) -> bool:
    try:
        return path.stat().st_mtime >= since["time"]
    except FileNotFoundError:
        return False


def kill_schedule(rng: np.random.Generator) -> list[Trigger]:
    """Six kills over the phases of a sweep, each at a moment drawn from ``rng``. All but the
    mid-test one can come in any run, even one with nothing left to test."""
    return [
        Trigger("startup", lambda out, names, since: True, rng.uniform(0.3, 2.0)),
        Trigger(
            "mid-test",
            lambda out, names, since: metric_rows(out) >= since["rows"] + 1,
            rng.uniform(0, 0.15),
        ),
        Trigger(
            "CSV write",
            lambda out, names, since: any(
                ".csv." in n and n.endswith(".tmp") and n not in since["names"] for n in names
            ),
            rng.uniform(0, 0.002),
        ),
        Trigger(
            "report",
            lambda out, names, since: written_since(out / RESULTS_CSV, since),
            rng.uniform(0, 0.3),
        ),
        Trigger(
            "tensorboard swap",
            lambda out, names, since: written_since(out / f"{TENSORBOARD}.tmp", since),
            rng.uniform(0, 0.01),
        ),
        Trigger("anywhere", lambda out, names, since: True, rng.uniform(0, 6.0)),
    ]


def test_sweep_killed_at_random_moments_ends_as_if_never_killed(
    tmp_path, tiny_data_args, checkpoint, capsys
):
    rng = np.random.default_rng(2024)
    options = [*tiny_data_args, *SWEEP_GRID, f"--ckpt_path={checkpoint}"]
    whole = tmp_path / "whole"
    sweep([*options, f"--out_dir={whole}"])
    capsys.readouterr()

    out, log = tmp_path / "killed", tmp_path / "sweep.log"
    out.mkdir()
    kills, before = [], {}
    for trigger in kill_schedule(rng):
        since = state(out)
        proc = spawn([sys.executable, "scripts/sweep.py", *options, f"--out_dir={out}"], log)
        if trigger.wait(proc, out, since, log):  # else it finished first: on with the next trigger
            rows = metric_rows(out)
            if kill(proc):
                caught = [
                    n for n in os.listdir(out) if n.endswith(".tmp") and n not in since["names"]
                ]
                writing = f", writing {caught[0]}" if caught else ""
                kills.append(f"{trigger.phase} ({rows} metric rows{writing})")
        after = check_outputs(out)
        assert_kept(before, after)
        before = after
    assert len(kills) >= 5, kills

    sweep([*options, f"--out_dir={out}"])
    assert_kept(before, check_outputs(out))
    for name in [*TABLES, RESULTS_CSV]:
        got, expected = read_output(out / name), read_output(whole / name)
        assert list(got.columns) == list(expected.columns), name
        columns = stable_columns(expected)
        pd.testing.assert_frame_equal(got[columns], expected[columns], check_exact=True, obj=name)
    assert scalars(out / TENSORBOARD) == scalars(
        whole / TENSORBOARD
    )  # one series per run, same points
    sessions = [sorted(p.name for p in (d / HPARAMS).iterdir() if p.is_dir()) for d in (out, whole)]
    assert sessions[0] == sessions[1]  # one HParams session per point
    leftovers = [
        p.name
        for p in out.rglob("*")
        if p.name.endswith((".tmp", ".old")) or p.parent.name == ".scratch"
    ]
    assert leftovers == []
    report_kills(capsys, "sweep", kills)
