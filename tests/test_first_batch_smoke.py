"""benchmarks/first_batch.py end to end at the tiny scale (its figures are not checked), and its
same-work check: a format whose rows differ fails the run."""

import numpy as np
import pytest

from benchmarks import first_batch, run
from benchmarks.harness import WorkMismatch

SOURCES = [
    "dlrm_terabyte",
    "dlrm_bin",
    "torchrec_npy",
    "torchrec_npy_contiguous",
    "torchrec_multihot",
]


def test_first_batch_benchmark_tiny_through_run(tmp_path):
    args = ["--scale", "tiny", "--only", "first_batch", "--repeats", "2", "--no-readme"]
    rows = run.main([*args, "--out-dir", str(tmp_path)])
    stages = [r["stage"] for r in rows]
    assert stages == [f"first batch from {s}, {k}" for s in SOURCES for k in ("cold", "warm")]
    assert all(0 < r["lit_dlrm_min"] <= r["lit_dlrm"] <= r["lit_dlrm_max"] for r in rows)
    assert all(r["runs"] == 2 for r in rows)
    text = (tmp_path / "run_tiny_first_batch.md").read_text()
    assert "| commit |" in text and "| first_batch | first batch from dlrm_bin, cold |" in text


def test_first_batch_fails_when_a_format_holds_other_rows(monkeypatch):
    write = first_batch.write_formats

    def reordered(root, *args):
        formats = write(root, *args)
        train = root / "bin" / "train_data.bin"
        rows = np.fromfile(train, dtype=np.int32).reshape(-1, 40)
        train.write_bytes(rows[::-1].tobytes())  # the same rows, another order
        return formats

    monkeypatch.setattr(first_batch, "write_formats", reordered)
    with pytest.raises(WorkMismatch, match="run 0 of dlrm_bin"):
        first_batch.run("tiny", 1)


def test_run_refuses_options_of_a_benchmark_it_does_not_run(capsys):
    with pytest.raises(SystemExit):
        run.main(["--scale", "tiny", "--only", "first_batch", "--dlrm", "somewhere"])
    assert "--dlrm: options of preprocess_terabyte" in capsys.readouterr().err
