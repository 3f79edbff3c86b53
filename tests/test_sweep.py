"""The sweep end to end: tables, identical-mask copies, reports, fail-fast options, every option
acting on the tables (kills: test_kills.py)."""

import contextlib
import itertools
import os
import re
from types import SimpleNamespace

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import timing
from lit_dlrm.cli import sweep
from lit_dlrm.sweep.grid import COLUMNS
from lit_dlrm.sweep.results import (
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    REFERENCE_COLUMNS,
    read_table,
    rows_tested,
)

GRID = [
    "--sweep.sparsity_level=[0.0, 0.5, 0.9, 1.0]",
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
    for name in REFERENCE_COLUMNS:  # what the floor and the resume check count as tests
        assert len(rows_tested(read_table(full_run, name))) == 8 * (
            3 if name == FORWARD_TIME_CSV else 1
        )
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
        ("--sweep.sparsity_level=[0.5, 1.5]", "sweep.sparsity_level"),
        ("--sweep.norm=[L3]", "sweep.norm"),
        ("--sweep.sparse_block_shape=[[1, 32]]", "sweep.sparse_block_shape"),
    ]:
        with pytest.raises(ValueError, match=message):
            sweep([*tiny_data_args, f"--ckpt_path={checkpoint}", f"--out_dir={tmp_path}", option])
    assert not any(tmp_path.iterdir())


# -- every option the sweep's --help lists acts on its CSV output ---------------------------------

ONE_POINT = [
    "--sweep.sparsity_level=[0.5]",
    "--sweep.norm=[L1]",
    "--sweep.sparse_block_shape=[[1, 4]]",
    "--sweep.studies=[]",
    "--timing.warmup=0",
    "--timing.repeats=2",
    "--timing.batch_size=256",
]
TABLES = (METRICS_CSV, METADATA_CSV, FORWARD_TIME_CSV)
EVERY_TABLE = set(TABLES)
CHANGES = {  # option -> (a value other than ONE_POINT's, the tables whose measurements it changes)
    "sweep.sparsity_level": ("[0.9]", EVERY_TABLE),
    "sweep.sparse_block_shape": ("[[1, 1]]", EVERY_TABLE),
    "sweep.norm": ("[L2]", {METRICS_CSV, METADATA_CSV}),
    "sweep.threshold": ("[global]", EVERY_TABLE),
    "sweep.weight_bits": ("[8]", EVERY_TABLE),
    "sweep.activation_sparsity": ("[0.5]", {METRICS_CSV, METADATA_CSV}),  # zip: file names
    "sweep.finetune_steps": ("[3]", {METRICS_CSV, METADATA_CSV}),
    "sweep.studies": ("[{weight_bits: [4]}]", EVERY_TABLE),
    "sparsify.signed_zeros": ("true", {METADATA_CSV}),
    "compression.keep_files": ("true", {METADATA_CSV}),
    "compression.one_file": ("false", {METADATA_CSV}),
    "compression.reference_zip": ("false", {METADATA_CSV}),
    "compression.measure_read": ("false", {METADATA_CSV}),
    "timing.batch_size": ("128", {FORWARD_TIME_CSV}),
    "timing.warmup": ("1", {FORWARD_TIME_CSV}),
    "timing.repeats": ("3", {FORWARD_TIME_CSV}),
}


@contextlib.contextmanager
def cold_start_clock():
    """callbacks.timing's clock made deterministic: the first run of each forward path takes 1 s
    (a cold start, what warm-up runs absorb), every later one 0.25 s."""
    now = [0.0]
    real = timing.time_runs

    def time_runs(run, device, warmup, repeats):
        calls = itertools.count()

        def timed():
            run()
            now[0] += 1.0 if next(calls) == 0 else 0.25

        return real(timed, device, warmup, repeats)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing, "time_runs", time_runs)
        patch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
        yield


def measurements(out) -> dict[str, pd.DataFrame]:
    """Each table without its point columns and, but for the timings (deterministic under
    cold_start_clock), without the seconds measured (of a read time: whether it was measured)."""
    tables = {name: read_table(out, name).drop(columns=list(COLUMNS)) for name in TABLES}
    for name in (METRICS_CSV, METADATA_CSV):
        read = tables[name].filter(regex=r"_read_s$").astype(str) != ""  # measured or not
        tables[name] = tables[name].filter(regex=r"^(?!.*(_s|_sec)$)").join(read)
    return tables


def sweep_one_point(out, tiny_data_args, checkpoint, *options) -> dict[str, pd.DataFrame]:
    with cold_start_clock():
        sweep(
            [*tiny_data_args, *ONE_POINT, *options, f"--ckpt_path={checkpoint}", f"--out_dir={out}"]
        )
    return measurements(out)


@pytest.fixture(scope="module")
def one_point(tmp_path_factory, tiny_data_args, checkpoint):
    return sweep_one_point(tmp_path_factory.mktemp("one-point"), tiny_data_args, checkpoint)


def test_help_lists_only_options_that_act(capsys):
    with pytest.raises(SystemExit):
        sweep(["--help"])
    listed = set(
        re.findall(r"--((?:sweep|sparsify|compression|timing)\.\w+)", capsys.readouterr().out)
    )
    assert listed == set(CHANGES)  # each tested below; the point's own options are not listed
    assert not {f"sparsify.{column}" for column in COLUMNS} & listed


@pytest.mark.parametrize("option", sorted(CHANGES))
def test_each_option_changes_the_tables(option, one_point, tmp_path, tiny_data_args, checkpoint):
    value, expected = CHANGES[option]
    tables = sweep_one_point(tmp_path, tiny_data_args, checkpoint, f"--{option}={value}")
    changed = {name for name in TABLES if not tables[name].equals(one_point[name])}
    assert changed == expected, sorted(changed)
