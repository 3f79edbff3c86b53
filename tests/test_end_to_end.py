"""benchmarks/end_to_end.py at CI size: the whole job on a 200,000-line Kaggle-shaped file, each
stage's row, the sweep's floor, and a second sweep of the same checkpoint that runs alone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.end_to_end import STAGES, main
from lit_dlrm.sweep.results import METADATA_CSV, METRICS_CSV, read_table

REPO = Path(__file__).resolve().parents[1]
SWEEP = "--sweep.studies=[] --sweep.norm=[L1] --sweep.sparse_block_shape=[[1,4]] "
SWEEP += "--sweep.sparsity_level=[0.5,0.9] --timing.repeats=2"


def end_to_end(work: Path, out: Path, *more: str, sweep: str = SWEEP) -> str:
    cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--lines=200000", "--train-steps=150"]
    cmd += [f"--work={work}", f"--out-dir={out}", f"--sweep-args={sweep}", *more]
    return subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout


def test_the_whole_job_on_a_small_kaggle_file_then_a_second_sweep_only(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    end_to_end(work, out)
    stages = json.loads((work / "stages.json").read_text())
    assert list(stages) == list(STAGES)
    for row in stages.values():
        assert row["wall_s"] > 0 and row["disk_gib"] > 0, row
        assert row["peak_rss_mib"] >= row["peak_anon_mib"] > 0, row
        assert not row["resumed"] and str(work) not in row["command"]
    metrics = read_table(work / "sweep", METRICS_CSV)
    assert len(metrics) == 2 and metrics.roc_auc.between(0.5, 1).all()
    text = (out / "end_to_end_200000.md").read_text()
    assert "`sweep` ran 2 tests: F = " in text and str(tmp_path) not in text
    # a second sweep of the same checkpoint: only it runs, the other rows are kept
    no_zip = f"{SWEEP} --compression.reference_zip=false"  # the same 2 points, no zip
    end_to_end(work, out, "--sweep-name=sweep_no_zip", sweep=no_zip)
    again = json.loads((work / "stages.json").read_text())
    assert {k: again[k] for k in stages} == stages and list(again)[-1] == "sweep_no_zip"
    metadata = read_table(work / "sweep_no_zip", METADATA_CSV)
    assert metadata.zip_file_size.astype(str).isin(["", "nan"]).all()  # left empty
    assert (metadata.zstd_sparse_bytes > 0).all()
    text = (out / "end_to_end_200000.md").read_text()
    assert "`sweep_no_zip` ran 2 tests" in text and "| sweep_no_zip |" in text


def test_synthetic_takes_no_file_options(tmp_path, capsys):
    for wrong in (["--lines=5"], ["--stages", "write", "train"]):
        with pytest.raises(SystemExit):
            main(["--synthetic", f"--work={tmp_path}", *wrong])
        assert "there is no file with --synthetic" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work
