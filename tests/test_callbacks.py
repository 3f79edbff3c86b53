"""The sweep callbacks in a plain ``trainer.test``: each on its own, and sharing one context."""

import itertools

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from callbacks import CheckpointCompression, SparseCooTiming, Sparsify
from callbacks.timing import coo_forward
from lit_dlrm.module import DLRMModule
from lit_dlrm.sparsity.compression import load_compressed
from lit_dlrm.sweep.context import SweepContext
from lit_dlrm.sweep.grid import GridPoint
from lit_dlrm.sweep.results import (
    FORWARD_TIME_CSV,
    METADATA_CSV,
    METRICS_CSV,
    REFERENCE_COLUMNS,
    read_table,
)

TABLES = [50, 30, 80]


@pytest.fixture
def module():
    torch.manual_seed(0)
    return DLRMModule(TABLES, embedding_dim=8, bottom_mlp=[16], top_mlp=[16])


@pytest.fixture
def loader():
    g = torch.Generator().manual_seed(1)
    n = 600
    dense = torch.rand(n, 13, generator=g)
    sparse = torch.stack([torch.randint(0, t, (n,), generator=g) for t in TABLES], 1)
    labels = (torch.rand(n, generator=g) < 0.3).float()
    return DataLoader(TensorDataset(dense, sparse, labels), batch_size=256)


def run_test(module, loader, callbacks):
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks
    )
    return trainer.test(module, dataloaders=loader, verbose=False)[0]


def bound(point: GridPoint, out_dir, *callbacks) -> list:
    """``callbacks`` sharing one context at ``point``, as the sweep runs them."""
    context = SweepContext(point, out_dir=out_dir)
    for cb in callbacks:
        cb.bind(context)
    return list(callbacks)


class ZeroCounter(Callback):
    """Records each table's fraction of zeros as the test epoch starts (after Sparsify)."""

    def on_test_epoch_start(self, trainer, pl_module):
        self.zeros = [float((t.weight == 0).float().mean()) for t in pl_module.model.emb_l]


def test_sparsify_prunes_during_test_and_restores_bit_identical(module, loader, tmp_path):
    before = {k: v.clone() for k, v in module.state_dict().items()}
    counter = ZeroCounter()
    pruned = run_test(module, loader, [Sparsify("L1", (1, 4), 0.5, out_dir=str(tmp_path)), counter])
    assert all(abs(z - 0.5) < 0.02 for z in counter.zeros)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    dense = run_test(module, loader, [])
    assert pruned["test/log_loss"] != dense["test/log_loss"]

    table = read_table(tmp_path, METRICS_CSV)
    assert (
        list(table.columns[: len(REFERENCE_COLUMNS[METRICS_CSV])]) == REFERENCE_COLUMNS[METRICS_CSV]
    )
    row = table.iloc[0]
    assert (row.norm, row.sparse_block_shape, row.sparsity_level) == ("L1", "(1, 4)", 0.5)
    assert row.roc_auc == pytest.approx(pruned["test/auc"]) and row.step_time_sec > 0


def test_sparsify_writes_positive_zeros_unless_asked_for_signed(module, loader):
    class Signs(Callback):
        def on_test_epoch_start(self, trainer, pl_module):
            w = pl_module.model.emb_l[2].weight
            self.seen.append(bool(torch.signbit(w[w == 0]).any()))

    for signed in (False, True):
        signs = Signs()
        signs.seen = []
        run_test(module, loader, [Sparsify("L2", (1, 1), 0.9, signed_zeros=signed), signs])
        assert signs.seen == [signed]


def test_sparsify_restores_after_a_failing_test(module, loader):
    before = [t.weight.clone() for t in module.model.emb_l]

    class Boom(Callback):
        def on_test_batch_end(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_test(module, loader, [Sparsify("L1", (1, 1), 1.0), Boom()])
    assert all(torch.equal(b, t.weight) for b, t in zip(before, module.model.emb_l))


def test_invalid_point_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="sparsify.sparsity_level"):
        Sparsify(sparsity_level=1.5)
    with pytest.raises(ValueError, match="sparsify.norm"):
        Sparsify(norm="L3")


def test_coo_path_computes_the_same_outputs(module):
    dense, sparse = torch.rand(64, 13), torch.stack([torch.randint(0, t, (64,)) for t in TABLES], 1)
    with torch.no_grad():
        torch.testing.assert_close(
            coo_forward(module.model, dense, sparse), module.model(dense, sparse)
        )


def test_timing_rows_for_both_paths(module, loader, tmp_path):
    run_test(
        module,
        loader,
        bound(
            GridPoint("L1", (1, 4), 0.9),
            tmp_path,
            Sparsify(),
            SparseCooTiming(batch_size=100, warmup=1, repeats=3),
        ),
    )
    table = read_table(tmp_path, FORWARD_TIME_CSV)
    assert list(table.columns[:5]) == REFERENCE_COLUMNS[FORWARD_TIME_CSV]
    assert sorted(table.dlrm_type) == ["compact", "with_torch_sparse", "without_torch_sparse"]
    rows = table.set_index("dlrm_type")
    dense_bytes = sum(t * 8 * 4 for t in TABLES)
    assert (
        rows.table_bytes["without_torch_sparse"]
        == rows.table_bytes["with_torch_sparse"]
        == dense_bytes
    )
    survivors = sum(
        4 * (2 * t - round(0.9 * 2 * t)) for t in TABLES
    )  # floats left in 2 blocks of 4 per row
    assert float(rows.coo_table_bytes["with_torch_sparse"]) == survivors * (2 * 8 + 4)
    assert 0 < rows.table_bytes["compact"] < 0.25 * dense_bytes
    assert float(rows.max_abs_diff["compact"]) < 1e-5 and float(rows.build_s["compact"]) > 0
    assert (table.time_taken > 0).all() and (table.p10_s <= table.p90_s).all()
    assert set(table.batch_size) == {100} and set(table.sparsity_level) == {0.9}
    with pytest.raises(ValueError, match="timing.repeats"):
        SparseCooTiming(repeats=0)


def test_compression_row_and_kept_files(module, loader, tmp_path):
    run_test(
        module,
        loader,
        bound(
            GridPoint("L1", (1, 1), 1.0),
            tmp_path,
            Sparsify(),
            CheckpointCompression(keep_files=True),
        ),
    )
    run_test(module, loader, [CheckpointCompression(str(tmp_path))])  # dense, files not kept
    table = read_table(tmp_path, METADATA_CSV)
    assert list(table.columns[:6]) == REFERENCE_COLUMNS[METADATA_CSV]
    pruned, dense = table.iloc[0], table.iloc[1]
    assert (pruned.norm, pruned.sparsity_level, dense.norm) == ("L1", 1.0, "dense")
    assert pruned.zip_bytes < dense.zip_bytes and pruned.zstd_sparse_bytes < dense.zstd_sparse_bytes
    assert pruned.zip_file_size == pruned.zip_bytes >> 20
    kept = load_compressed(pruned.zstd_sparse_path)
    assert all(torch.count_nonzero(kept[f"emb_l.{k}.weight"]) == 0 for k in range(len(TABLES)))
    assert dense.path == "" and dense.zstd_sparse_path == ""
    kept_files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept_files == ["L1_1x1_1.lds", "L1_1x1_1.zip"]
    assert not list(tmp_path.glob("tmp*"))  # no measuring leftovers


def test_compression_without_one_file_leaves_its_columns_empty(module, loader, tmp_path):
    point = GridPoint("L1", (1, 1), 0.5)
    compression = CheckpointCompression(one_file=False)  # unsharded: nothing else to measure
    run_test(module, loader, bound(point, tmp_path, Sparsify(), compression))
    table = read_table(tmp_path, METADATA_CSV)
    assert len(table) == 1 and str(table.zip_file_size[0]) in ("", "nan")  # kept, empty
    assert not {"zip_bytes", "zstd_sparse_bytes"} & set(table.columns)


def test_compression_without_reference_zip_leaves_the_zip_columns_empty(module, loader, tmp_path):
    point = GridPoint("L1", (1, 1), 0.5)
    compression = CheckpointCompression(reference_zip=False)
    run_test(module, loader, bound(point, tmp_path, Sparsify(), compression))
    table = read_table(tmp_path, METADATA_CSV)
    assert len(table) == 1 and str(table.zip_file_size[0]) in ("", "nan")
    assert "zip_bytes" not in table.columns and table.zstd_sparse_bytes[0] > 0


def test_bound_callbacks_write_the_same_rows_in_any_order(module, loader, tmp_path):
    point = GridPoint("L2", (1, 4), 0.75, weight_bits=8)
    seen = []
    for i, order in enumerate(itertools.permutations(range(3))):
        out = tmp_path / str(i)
        made = [Sparsify(), CheckpointCompression(), SparseCooTiming(warmup=0, repeats=1)]
        run_test(module, loader, bound(point, out, *(made[k] for k in order)))
        tables = [read_table(out, name) for name in (METRICS_CSV, METADATA_CSV, FORWARD_TIME_CSV)]
        assert all(GridPoint.from_row(row) == point for t in tables for _, row in t.iterrows())
        seen.append([t.filter(regex=r"^(?!.*(_s|_sec|time_taken)$)") for t in tables])  # no times
    for tables in seen[1:]:
        for table, first in zip(tables, seen[0]):
            pd.testing.assert_frame_equal(table, first)
