"""benchmarks/end_to_end.py at CI size: the whole job on a 200,000-line Kaggle-shaped file, each
stage's row, the sweep's floor, and a rerun that runs nothing again."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.end_to_end import STAGES
from lit_dlrm.sweep.results import METRICS_CSV, read_table

REPO = Path(__file__).resolve().parents[1]
SWEEP = "--sweep.studies=[] --sweep.norm=[L1] --sweep.sparse_block_shape=[[1,4]] "
SWEEP += "--sweep.sparsity_level=[0.5,0.9] --timing.repeats=2"


def end_to_end(work: Path, out: Path) -> str:
    cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--lines=200000", "--train-steps=150"]
    cmd += [f"--work={work}", f"--out-dir={out}", f"--sweep-args={SWEEP}"]
    return subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout


def test_the_whole_job_on_a_small_kaggle_file_then_a_rerun_runs_nothing(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    end_to_end(work, out)
    stages = json.loads((work / "stages.json").read_text())
    assert list(stages) == list(STAGES)
    for row in stages.values():
        assert row["wall_s"] > 0 and row["peak_rss_mib"] > 0 and row["disk_gib"] > 0, row
        assert not row["resumed"] and str(work) not in row["command"]
    metrics = read_table(work / "sweep", METRICS_CSV)
    assert len(metrics) == 2 and metrics.roc_auc.between(0.5, 1).all()
    text = (out / "end_to_end_200000.md").read_text()
    assert "the sweep ran 2 tests" in text and "so F = " in text
    assert str(tmp_path) not in text
    end_to_end(work, out)  # every stage done: nothing runs again, the rows are kept
    assert json.loads((work / "stages.json").read_text()) == stages
