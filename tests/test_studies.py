"""Past the reference: global threshold, int8/int4 tables, activation sparsity and fine-tuning,
as dimensions of the same sweep (grid -> callbacks -> CSV columns -> report)."""

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dlrm.cli import sweep
from lit_dlrm.data import CriteoDataModule
from lit_dlrm.module import DLRMModule
from lit_dlrm.schedules import WarmupPolyDecay
from lit_dlrm.sparsity.finetune import finetune
from lit_dlrm.sparsity.prune import prune
from lit_dlrm.sweep.grid import DEFAULTS
from lit_dlrm.sweep.results import FORWARD_TIME_CSV, METADATA_CSV, METRICS_CSV, read_table

STUDIES = (
    "--sweep.studies=["
    "{threshold: [global]},"
    "{weight_bits: [8, 4]},"
    "{activation_sparsity: [0.95], sparsity_level: [0.0, 0.9]},"
    "{finetune_steps: [40], sparsity_level: [0.9]}]"
)
GRID = [
    "--sweep.sparsity_level=[0.0, 0.9, 1.0]",
    "--sweep.norm=[L2]",
    "--sweep.sparse_block_shape=[[1, 4]]",
    STUDIES,
    "--timing.warmup=0",
    "--timing.repeats=1",
    "--timing.batch_size=256",
]
# (threshold, weight_bits, activation_sparsity, finetune_steps, level) of every point of GRID
POINTS = (
    [("per_table", 32, 0.0, 0, lv) for lv in (0.0, 0.9, 1.0)]
    + [("global", 32, 0.0, 0, lv) for lv in (0.0, 0.9, 1.0)]
    + [("per_table", bits, 0.0, 0, lv) for bits in (8, 4) for lv in (0.0, 0.9, 1.0)]
    + [("per_table", 32, 0.95, 0, lv) for lv in (0.0, 0.9)]
    + [("per_table", 32, 0.0, 40, 0.9)]
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data_args, checkpoint):
    out = tmp_path_factory.mktemp("studies")
    sweep([*tiny_data_args, *GRID, f"--ckpt_path={checkpoint}", f"--out_dir={out}"])
    return out


@pytest.fixture(scope="module")
def table_bytes(tiny_data_args):
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    data.setup()
    return sum(data.table_sizes) * 16 * 4


def point_of(row) -> tuple:
    return (
        row.threshold,
        int(row.weight_bits),
        float(row.activation_sparsity),
        int(row.finetune_steps),
        float(row.sparsity_level),
    )


def test_every_table_has_the_new_columns_and_every_point(run):
    for name in (METRICS_CSV, METADATA_CSV, FORWARD_TIME_CSV):
        table = read_table(run, name)
        assert set(DEFAULTS) <= set(table.columns)
        points = [point_of(r) for r in table.itertuples()]
        assert sorted(set(points)) == sorted(POINTS)
        assert len(points) == len(POINTS) * (
            table["dlrm_type"].nunique() if name == FORWARD_TIME_CSV else 1
        )


def test_each_dimension_changes_what_it_should(run, table_bytes):
    m = (
        read_table(run, METRICS_CSV)
        .assign(point=lambda t: [point_of(r) for r in t.itertuples()])
        .set_index("point")
    )
    meta = (
        read_table(run, METADATA_CSV)
        .assign(point=lambda t: [point_of(r) for r in t.itertuples()])
        .set_index("point")
    )
    ref = ("per_table", 32, 0.0, 0)

    def at(table, dims, level, column):
        return table.loc[[(*dims, level)], column].iloc[0]

    # global: identical to per-table at levels 0 and 1 (copied, not retested), different at 0.9
    for level in (0.0, 1.0):
        assert at(m, ("global", 32, 0.0, 0), level, "same_mask_as") != ""
        assert at(m, ("global", 32, 0.0, 0), level, "roc_auc") == at(m, ref, level, "roc_auc")
    assert at(m, ("global", 32, 0.0, 0), 0.9, "log_loss") != at(m, ref, 0.9, "log_loss")
    # int8 / int4: smaller on disk at every level (both measurements); at level 0 the tables
    # shrink to about 1/4 and 1/8 (plus row scales; the MLPs stay float32); quality close
    for bits, saved in ((8, 0.6), (4, 0.75)):
        for column in ("zip_bytes", "zstd_sparse_bytes"):
            assert (
                at(meta, ref, 0.0, column) - at(meta, ("per_table", bits, 0.0, 0), 0.0, column)
                > saved * table_bytes
            )
            assert at(meta, ("per_table", bits, 0.0, 0), 0.9, column) < at(meta, ref, 0.9, column)
        assert (
            abs(at(m, ("per_table", bits, 0.0, 0), 0.0, "roc_auc") - at(m, ref, 0.0, "roc_auc"))
            < 0.02
        )
    # activation sparsity changes quality alone (table level 0) and combined (0.9; 0.95 of z, since
    # at table level 0.9 most of z is zero already and 0.8 can remove nothing but zeros)
    for level in (0.0, 0.9):
        assert at(m, ("per_table", 32, 0.95, 0), level, "log_loss") != at(m, ref, level, "log_loss")
    # fine-tuning an untrained pruned model can only help on this data
    tuned = ("per_table", 32, 0.0, 40)
    assert at(m, tuned, 0.9, "log_loss") < at(m, ref, 0.9, "log_loss")
    assert at(m, tuned, 0.9, "finetune_s") > 0


def test_report_has_one_run_per_series_and_the_followups_plot(run):
    results = pd.read_csv(run / "results.csv")
    assert len(results) == len(POINTS)
    tuned = results[results.finetune_steps > 0].iloc[0]
    untuned = results[
        (results.finetune_steps == 0)
        & (results.sparsity_level == tuned.sparsity_level)
        & (results.weight_bits == 32)
        & (results.activation_sparsity == 0)
        & (results.threshold == "per_table")
    ]
    assert tuned.log_loss_before_finetune == untuned.log_loss.item() != tuned.log_loss
    assert results[results.finetune_steps == 0].roc_auc_before_finetune.isna().all()
    runs = sorted(p.name for p in (run / "tensorboard").iterdir())
    assert runs == sorted(
        ["L2_1x4", "L2_1x4_global", "L2_1x4_int8", "L2_1x4_int4", "L2_1x4_act0.95", "L2_1x4_ft40"]
    )
    acc = EventAccumulator(str(run / "tensorboard" / "L2_1x4_int8"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("zstd_sparse_bytes")] == [0, 90, 100]
    assert (run / "followups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "scheduled, optimizer", [(False, "adagrad"), (True, "adagrad"), (False, "sgd")]
)
def test_finetune_holds_the_masks_and_trains_the_rest(scheduled, optimizer):
    torch.manual_seed(0)
    schedule = (
        (lambda opt: WarmupPolyDecay(opt, warmup_steps=4, decay_start_step=5, decay_steps=5))
        if scheduled
        else None
    )
    module = DLRMModule(
        [40, 60, 25],
        embedding_dim=8,
        bottom_mlp=[16],
        top_mlp=[16],
        optimizer=optimizer,
        lr=0.05,
        lr_scheduler=schedule,
    )
    prune([t.weight.data for t in module.model.emb_l], "L1", (1, 4), 0.7)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.rand(64, 13, generator=g),
            torch.stack([torch.randint(0, n, (64,), generator=g) for n in (40, 60, 25)], 1),
            (torch.rand(64, generator=g) < 0.3).float(),
        )
        for _ in range(3)
    ]
    finetune(module, batches, steps=10)  # more steps than batches: cycles
    after = module.model.state_dict()
    for k in range(3):
        w0, w1 = before[f"emb_l.{k}.weight"], after[f"emb_l.{k}.weight"]
        zero = w0 == 0
        assert (
            zero.float().mean() > 0.6 and (w1[zero] == 0).all() and (w1[zero].signbit() == 0).all()
        )
        assert not torch.equal(w0[~zero], w1[~zero])  # the survivors did train
    assert not torch.equal(before["top_l.0.weight"], after["top_l.0.weight"])
