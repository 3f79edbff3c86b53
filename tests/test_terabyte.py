"""Criteo Terabyte day files: dlrm's rules (day-23 split, first-appearance ids over all days,
max_ind_range, min_frequency), seeded down-sampling, .gz, parallel days, resume after a kill."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lit_dlrm.data import terabyte
from lit_dlrm.data.criteo import read_file
from lit_dlrm.data.preprocess import PreprocessOptions, preprocess_text
from lit_dlrm.data.terabyte import (
    PARTS,
    TERABYTE_TABLE_SIZES,
    cached_terabyte,
    day_files,
    write_days,
)

ROWS = 1001  # odd: the last day's test half takes the extra row


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "raw"
    write_days(out, days=3, rows_per_day=ROWS, max_table_size=500, seed=3)
    return out


def arrays(directory: Path) -> dict:
    out = {k: np.load(directory / f"{k}.npy") for k in ("dense", "sparse", "label")}
    with np.load(directory / "vocab.npz") as v:
        out.update({k: v[k] for k in v.files})
    return out


def assert_same(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def concatenated(days_dir: Path, out: Path) -> Path:
    with open(out, "wb") as f:
        for p in day_files(days_dir):
            f.write(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes())
    return out


@pytest.mark.parametrize(
    "options",
    [PreprocessOptions(), PreprocessOptions(max_ind_range=97, min_frequency=3)],
    ids=["plain", "hashed+rare"],
)
def test_same_arrays_as_one_file_and_dlrm_split(days, tmp_path, options):
    """Days merged = the Kaggle path over the days concatenated (first appearance over all days,
    max_ind_range, min_frequency); splits: days 0-1 train, day 2 test = first ceil(n/2)."""
    d, meta = cached_terabyte(days, tmp_path / "cache", options, workers=1, progress=False)
    one = tmp_path / "one"
    preprocess_text(concatenated(days, tmp_path / "all.txt"), one, options, progress=False)
    assert_same(d, one)
    assert meta["rows"] == 3 * ROWS
    assert meta["days"] == [0, ROWS, 2 * ROWS, 3 * ROWS]
    assert meta["splits"] == {
        "train": [0, 2 * ROWS],
        "test": [2 * ROWS, 2 * ROWS + (ROWS + 1) // 2],
        "val": [2 * ROWS + (ROWS + 1) // 2, 3 * ROWS],
    }
    sparse = np.load(d / "sparse.npy")
    assert (sparse.max(axis=0) < meta["table_sizes"]).all()
    assert not (tmp_path / "cache" / PARTS).exists() or not any(
        (tmp_path / "cache" / PARTS).iterdir()
    ), "the parts are removed once the cache is complete"


def test_sub_sampling_rate_seeded_and_train_days_only(days, tmp_path):
    opts = PreprocessOptions()
    kw = dict(workers=1, progress=False, sub_sample_rate=0.6)
    d1, m1 = cached_terabyte(days, tmp_path / "a", opts, seed=5, **kw)
    d2, m2 = cached_terabyte(days, tmp_path / "b", opts, seed=5, block_bytes=4096, **kw)
    d3, m3 = cached_terabyte(days, tmp_path / "c", opts, seed=6, **kw)
    assert_same(d1, d2)  # same seed: same rows, whatever the block size
    assert m1["options"]["sub_sample_rate"] == 0.6 and m1["options"]["seed"] == 5
    assert not np.array_equal(np.load(d1 / "label.npy"), np.load(d3 / "label.npy"))
    raw = read_file(concatenated(days, tmp_path / "all.txt"))[0].label
    negatives = [(raw[i * ROWS : (i + 1) * ROWS] == 0).sum() for i in range(3)]
    dropped = sum(p["sub_sampled_rows"] for p in m1["per_day"])
    assert abs(dropped / (negatives[0] + negatives[1]) - 0.6) < 0.05
    assert m1["per_day"][2]["sub_sampled_rows"] == 0 and m1["per_day"][2]["rows"] == ROWS
    label = np.load(d1 / "label.npy")
    for p in m1["per_day"]:  # only label-0 rows go
        assert p["positives"] == (raw[p["day"] * ROWS : (p["day"] + 1) * ROWS] == 1).sum()
    assert label.sum() == (raw == 1).sum()
    a, b = m1["splits"]["test"]
    assert b - a == (ROWS + 1) // 2


def test_gzip_equals_plain(days, tmp_path):
    gz = tmp_path / "gz"
    write_days(gz, days=3, rows_per_day=ROWS, max_table_size=500, seed=3, compress=True)
    assert sorted(p.name for p in gz.iterdir()) == ["day_0.gz", "day_1.gz", "day_2.gz"]
    assert gzip.decompress((gz / "day_1.gz").read_bytes()) == (days / "day_1").read_bytes()
    opts = PreprocessOptions(max_ind_range=1000)
    a, _ = cached_terabyte(days, tmp_path / "c1", opts, workers=1, progress=False)
    b, _ = cached_terabyte(gz, tmp_path / "c2", opts, workers=1, progress=False)
    assert_same(a, b)


def test_parallel_equals_serial(days, tmp_path):
    opts = PreprocessOptions(max_ind_range=1000)
    kw = dict(progress=False, sub_sample_rate=0.3, seed=1)
    a, ma = cached_terabyte(days, tmp_path / "c1", opts, workers=1, **kw)
    b, mb = cached_terabyte(days, tmp_path / "c2", opts, workers=2, **kw)
    assert_same(a, b)
    assert ma["per_day"] == mb["per_day"]


def _count_builds(monkeypatch) -> list:
    calls = []
    real = terabyte.build_arrays

    def counting(blocks, out_dir, *a, **k):
        calls.append(out_dir.name)
        return real(blocks, out_dir, *a, **k)

    monkeypatch.setattr(terabyte, "build_arrays", counting)
    return calls


def test_resume_redoes_only_the_missing_days(days, tmp_path, monkeypatch):
    """A failure in day 2 keeps days 0 and 1; the rerun parses day 2 only."""
    real = terabyte.preprocess_day

    def failing(job, progress=None):
        if job.day == 2:
            raise RuntimeError("simulated crash in day 2")
        return real(job, progress)

    monkeypatch.setattr(terabyte, "preprocess_day", failing)
    opts = PreprocessOptions()
    with pytest.raises(RuntimeError, match="simulated"):
        cached_terabyte(days, tmp_path / "c", opts, workers=1, progress=False)
    parts = tmp_path / "c" / PARTS
    done = sorted(p.name.split("-")[0] for p in parts.iterdir() if (p / "meta.json").exists())
    assert done == ["day_0", "day_1"]
    monkeypatch.setattr(terabyte, "preprocess_day", real)
    calls = _count_builds(monkeypatch)
    d, _ = cached_terabyte(days, tmp_path / "c", opts, workers=1, progress=False)
    assert len(calls) == 1 and "day_2" in calls[0]
    fresh, _ = cached_terabyte(days, tmp_path / "fresh", opts, workers=1, progress=False)
    assert_same(d, fresh)


def test_resume_after_a_kill_mid_day(tmp_path, monkeypatch):
    """A preprocessing process killed mid-run: the days it finished are kept, the rest redone."""
    raw = tmp_path / "raw"
    write_days(raw, days=4, rows_per_day=20_000, max_table_size=2000, seed=1)
    cache = tmp_path / "cache"
    code = (
        "import sys; from lit_dlrm.data.terabyte import cached_terabyte;"
        "from lit_dlrm.data.preprocess import PreprocessOptions;"
        "cached_terabyte(sys.argv[1], sys.argv[2], PreprocessOptions(), workers=1,"
        " progress=False, block_bytes=1 << 16)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(raw), str(cache)])
    parts = cache / PARTS

    def finished() -> list[Path]:
        if not parts.is_dir():
            return []
        return [p for p in parts.iterdir() if p.is_dir() and (p / "meta.json").exists()]

    deadline = time.monotonic() + 120
    while len(finished()) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p.name: (p / "meta.json").stat().st_mtime_ns for p in finished()}
    assert 1 <= len(kept) < 4, f"the kill came too late or too early: {sorted(kept)}"
    assert not any(p.name.startswith("terabyte-raw") for p in cache.iterdir())
    calls = _count_builds(monkeypatch)
    d, meta = cached_terabyte(raw, cache, PreprocessOptions(), workers=1, progress=False)
    assert len(calls) == 4 - len(kept)
    fresh, _ = cached_terabyte(raw, tmp_path / "fresh", PreprocessOptions(), progress=False)
    assert_same(d, fresh)
    assert meta["rows"] == 80_000


def test_day_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data.path"):
        day_files(tmp_path / "nope")
    (tmp_path / "day_0").write_text("")
    with pytest.raises(ValueError, match="1 day file"):
        day_files(tmp_path)
    (tmp_path / "day_2.gz").write_text("")
    with pytest.raises(ValueError, match="missing day_1"):
        day_files(tmp_path)
    (tmp_path / "day_1").write_text("")
    (tmp_path / "day_1.gz").write_text("")
    with pytest.raises(ValueError, match="day 1 is there twice"):
        day_files(tmp_path)


def test_generator_table_sizes_and_teacher_labels(days):
    block, _ = read_file(days / "day_0")
    for j, cap in enumerate(TERABYTE_TABLE_SIZES):
        values = np.unique(block.cat[:, j])
        assert len(values[values != 0]) <= min(cap, 500)
    # the tiny tables keep Terabyte's sizes: C6 has 3 values, C17 4, C13 10
    assert len(np.unique(block.cat[:, 5][block.cat[:, 5] != 0])) <= 3
    assert 0.15 < block.label.mean() < 0.35  # the teacher's positive rate (Kaggle's 0.256)


def test_datamodule_source_terabyte(days, tmp_path):
    from lit_dlrm.data import CriteoDataModule

    dm = CriteoDataModule(
        source="terabyte",
        path=str(days),
        cache_dir=str(tmp_path / "cache"),
        eval_batch_size=256,
        sub_sample_rate=0.25,
        preprocess_workers=1,
        progress=False,
    )
    dm.prepare_data()
    dm.setup()
    assert dm.meta["options"]["sub_sample_rate"] == 0.25
    assert dm.split_range("val")[1] == dm.meta["rows"]
    dense, sparse, label = next(iter(dm.test_dataloader()))
    assert dense.shape == (256, 13) and sparse.shape == (256, 26) and label.shape == (256,)
    with pytest.raises(ValueError, match="source='terabyte' only"):
        CriteoDataModule(source="synthetic", sub_sample_rate=0.5)
    with pytest.raises(ValueError, match="sub_sample_rate"):
        CriteoDataModule(source="terabyte", path=str(days), sub_sample_rate=1.0)


def test_benchmark_runs_tiny_without_dlrm(tmp_path):
    """benchmarks/preprocess_terabyte.py end to end at the tiny scale (lit_dlrm's rows only: dlrm's
    code needs a checkout and NumPy < 2; its figures are not checked); the 1- and 2-worker runs
    must write the same arrays (its same-work check)."""
    from benchmarks import preprocess_terabyte

    args = ["--scale", "tiny", "--repeats", "1", "--workers", "2", "--out-dir", str(tmp_path)]
    preprocess_terabyte.main(args)
    md = (tmp_path / "preprocess_terabyte_tiny.md").read_text()
    assert "| command | `python -m benchmarks.preprocess_terabyte --scale tiny" in md
    assert "lit_dlrm 1 worker(s) | rows/s |" in md and "lit_dlrm 2 worker(s) | rows/s |" in md
    with pytest.raises(ValueError, match="--dlrm: .* has no data_utils.py"):
        preprocess_terabyte.run("tiny", 1, workers=1, dlrm=str(tmp_path))


def test_id_assigner_matches_first_appearance_across_merges(monkeypatch):
    """Ids by first appearance, keys sorted, counts exact, while the recent values are merged into
    the large array many times (a tiny merge size makes every path run)."""
    from lit_dlrm.data.preprocess import IdAssigner

    monkeypatch.setattr(IdAssigner, "MIN_MERGE", 8)
    rng = np.random.default_rng(0)
    assign, first, counts = IdAssigner(), {}, []
    for b in range(200):
        raw = rng.integers(0, 3000 + 40 * b, size=int(rng.integers(1, 300))).astype(np.uint32)
        expected = []
        for v in raw.tolist():
            if v not in first:
                first[v] = len(first)
                counts.append(0)
            counts[first[v]] += 1
            expected.append(first[v])
        assert assign(raw).tolist() == expected
    keys = sorted(first)
    assert assign.keys.tolist() == keys
    assert assign.ids.tolist() == [first[k] for k in keys]
    assert assign.counts.tolist() == counts and assign.size == len(first)


def test_generator_at_its_default_cap_has_interacting_pairs(tmp_path):
    """At the default cap only five Terabyte tables hold 100..6000 values (ten pairs, fewer than a
    preset draws): the teacher takes the nearest sizes too, instead of failing or looping."""
    from lit_dlrm.data.synthetic import Teacher
    from lit_dlrm.data.terabyte import TerabyteSyntheticConfig

    teacher = Teacher.from_config(TerabyteSyntheticConfig(rows=1000, max_table_size=20_000))
    sizes = TerabyteSyntheticConfig(rows=1000, max_table_size=20_000).table_sizes()
    assert sum(100 <= n <= 6000 for n in sizes) == 5
    assert len(set(teacher.pairs)) == teacher.config.scales.interaction_pairs
    assert all(100 <= sizes[j] <= 20_000 for pair in teacher.pairs for j in pair)
    assert len(write_days(tmp_path, days=2, rows_per_day=500)) == 2
