"""benchmarks/torchrec_scaling at the tiny scale (figures unchecked): all five sides run in their
spawned processes and do the same work; sharded ranks hold about half the table bytes,
replicated ones all; the same-work check refuses a run that differs. Skipped without TorchRec,
except under ``CI=true``, where a missing TorchRec fails."""

import csv
import os
from dataclasses import replace

import pytest
import torch

if os.environ.get("CI") == "true":
    import torchrec  # noqa: F401 (CI installs it: missing there is a failure, not a skip)
else:
    pytest.importorskip("torchrec")

from benchmarks import torchrec_scaling  # noqa: E402
from benchmarks.torchrec_scaling import Work, same_sweep, same_training  # noqa: E402


def test_same_work_refuses_other_losses_sums_or_points():
    work = Work(
        [0.7, 0.6], {"emb_l.0.weight": 2.0}, {"top_l.0.bias": torch.ones(3)}, [(0.69, 0.5, 10)]
    )
    assert same_training(work, replace(work, losses=[0.7, 0.6 + 1e-6]))
    assert not same_training(work, replace(work, losses=[0.7, 0.61]))
    assert not same_training(work, replace(work, sums={"emb_l.0.weight": 2.01}))
    assert not same_training(work, replace(work, mlps={"top_l.0.bias": torch.ones(3) + 1e-4}))
    assert not same_sweep(work, replace(work, points=[(0.69, 0.5, 11)]))
    assert not same_sweep(work, replace(work, points=[(0.69, 0.51, 10)]))


@pytest.mark.slow
def test_tiny_run_writes_every_row_with_tables_halved_when_sharded(tmp_path):
    torchrec_scaling.main(["--scale", "tiny", "--repeats", "1", "--out-dir", str(tmp_path)])
    with open(tmp_path / "torchrec_scaling_tiny.csv") as f:
        rows = list(csv.DictReader(f))
    assert (tmp_path / "torchrec_scaling_tiny.md").exists()
    stages = {r["stage"]: {k: float(r[k]) for k in ("lit_dlrm", "reference")} for r in rows}
    total = sum(torchrec_scaling.table_sizes(torchrec_scaling.SCALES["tiny"])) * 16 * 4 / 2**20
    for stage in ("train, 1 process", "train, 2 processes, column_wise", "sweep point, 1 process"):
        assert stages[stage]["lit_dlrm"] > 0 and stages[stage]["reference"] > 0
    assert stages["tables held, 1 process, rank 0"]["lit_dlrm"] == pytest.approx(total)
    for sharding in ("table_wise", "column_wise"):
        held = [stages[f"tables held, 2 processes, {sharding}, rank {r}"] for r in (0, 1)]
        assert sum(h["lit_dlrm"] for h in held) == pytest.approx(total)  # each table once
        assert all(0.3 * total < h["lit_dlrm"] < 0.7 * total for h in held)  # about half each
        assert all(h["reference"] == pytest.approx(total) for h in held)  # replicated: all
        assert all(
            stages[f"peak RSS, 2 processes, {sharding}, rank {r}"]["lit_dlrm"] > 0 for r in (0, 1)
        )
