"""scripts/sweep.py end to end: tables, identical-mask copies, reports, fail-fast options (kills: test_kills.py)."""

import os

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dlrm.cli import sweep
from lit_dlrm.results import FORWARD_TIME_CSV, METRICS_CSV, REFERENCE_COLUMNS, read_table

GRID = [
    "--sweep.levels=[0.0, 0.5, 0.9, 1.0]",
    "--sweep.studies=[]",
    "--timing.warmup=0",
    "--timing.repeats=2",
    "--timing.batch_size=256",
]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_data_args, checkpoint):
    out = tmp_path_factory.mktemp("sweep")
    sweep([*tiny_data_args, *GRID, f"--ckpt_path={checkpoint}", f"--out_dir={out}"])
    return out


def test_tables_have_reference_columns_and_every_point(full_run):
    for name, columns in REFERENCE_COLUMNS.items():
        table = read_table(full_run, name)
        assert list(table.columns[: len(columns)]) == columns
        rows_per_point = 3 if name == FORWARD_TIME_CSV else 1  # dense, COO, compact
        assert len(table) == 16 * rows_per_point  # 2 norms x 2 block shapes x 4 levels
    metrics = read_table(full_run, METRICS_CSV)
    assert set(metrics.sparse_block_shape) == {"(1, 1)", "(1, 4)"}
    # level 0 and 1 are tested once and copied; L2 (1,1) is L1 (1,1) for these float32 tables
    copied = metrics[metrics.same_mask_as != ""]
    assert len(copied) == 16 - 8
    assert (copied.sparsity_level.isin([0.0, 1.0]) | (copied.sparse_block_shape == "(1, 1)")).all()
    level0 = metrics[metrics.sparsity_level == 0.0]
    assert level0.roc_auc.nunique() == 1 and level0.log_loss.nunique() == 1
    level1 = metrics[metrics.sparsity_level == 1.0]
    assert level1.roc_auc.nunique() == 1 and level1.roc_auc.iloc[0] != level0.roc_auc.iloc[0]


def test_report_files_and_tensorboard_runs(full_run):
    umask = os.umask(0)
    os.umask(umask)
    assert (full_run / "results.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    results = pd.read_csv(full_run / "results.csv")
    assert len(results) == 16 and {
        "roc_auc",
        "zip_bytes",
        "zstd_sparse_bytes",
        "forward_s_dense",
        "forward_s_coo",
        "forward_s_compact",
        "table_bytes_compact",
    } <= set(results)
    for png in ("disk_size.png", "quality.png", "forward_time.png", "memory.png"):
        assert (full_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (full_run / "tensorboard").iterdir())
    assert runs == ["L1_1x1", "L1_1x4", "L2_1x1", "L2_1x4"]
    acc = EventAccumulator(str(full_run / "tensorboard" / "L1_1x4"))
    acc.Reload()
    assert {"roc_auc", "log_loss", "zip_bytes", "forward_s_coo"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("roc_auc")] == [0, 50, 90, 100]  # x axis: level in percent


def test_invalid_grid_fails_before_any_work(tmp_path, tiny_data_args, checkpoint):
    for option, message in [
        ("--sweep.levels=[0.5, 1.5]", "sweep.levels"),
        ("--sweep.norms=[L3]", "sweep.norms"),
        ("--sweep.block_shapes=[[1, 32]]", "sweep.block_shapes"),
    ]:
        with pytest.raises(ValueError, match=message):
            sweep([*tiny_data_args, f"--ckpt_path={checkpoint}", f"--out_dir={tmp_path}", option])
    assert not any(tmp_path.iterdir())
