"""Synthetic data and the DataModule's batches (tiny sizes, tmp_path caches)."""

import numpy as np
import pytest
import torch

from lit_dlrm.data import CriteoDataModule, ShardedBatchSampler, SyntheticConfig, Teacher, write_tsv
from lit_dlrm.data.preprocess import PreprocessOptions, cached_text

TINY = dict(synthetic_rows=20_000, max_table_size=500)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = CriteoDataModule(
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        batch_size=4096,
        eval_batch_size=1000,
        **TINY,
    )
    d.prepare_data()
    d.setup()
    return d


def test_synthetic_shape_rates_and_teacher(dm):
    sizes = dm.table_sizes
    assert len(sizes) == 26 and dm.num_dense == 13
    assert max(sizes) <= 501 and sizes[8] <= 4  # capped; C9 has 3 Kaggle values (+ missing)
    m = dm.meta
    assert m["rows"] == 20_000
    label = np.load(dm.cache_path / "label.npy")
    assert abs(label.mean() - 0.256) < 0.02
    dense = np.load(dm.cache_path / "dense.npy")
    assert dense.min() == 0 and (dense == 0).mean() > 0.1  # missing / negative -> 0
    t = dm.teacher_metrics("test")
    assert set(t) == {"auc", "log_loss", "positive_rate"} and 0.7 < t["auc"] < 0.95
    d = dm.meta["teacher"]["auc_decomposition"]["test"]
    # ranking by the whole logit is ranking by the stored probabilities, on the same labels
    assert d["bayes"] == pytest.approx(t["auc"], abs=1e-4)
    # dense alone is not enough, and the pairwise terms add to the main effects
    assert d["dense_only"] < d["main_effects"] - 0.05 and d["main_effects"] < d["bayes"] - 0.01


def test_synthetic_is_deterministic_and_seed_dependent():
    cfg = SyntheticConfig(rows=3000, max_table_size=200, seed=3)
    a = next(Teacher.from_config(cfg).blocks())
    b = next(Teacher.from_config(cfg).blocks())
    c = next(Teacher.from_config(SyntheticConfig(rows=3000, max_table_size=200, seed=4)).blocks())
    assert (a.cat == b.cat).all() and (a.dense == b.dense).all() and (a.label == b.label).all()
    assert (a.extras["prob"] == b.extras["prob"]).all()
    assert not (a.cat == c.cat).all()
    assert (a.dense < 0).any() and (a.dense == np.iinfo(np.int32).min).any()  # negatives, missing


def test_synthetic_tsv_round_trip_gives_the_same_arrays(tmp_path, dm):
    cfg = dm.synthetic
    tsv = write_tsv(cfg, tmp_path / "train.txt")
    d, meta = cached_text(tsv, tmp_path / "c", PreprocessOptions(), progress=False)
    assert meta["table_sizes"] == dm.table_sizes and meta["splits"] == dm.meta["splits"]
    for name in ("dense", "sparse", "label"):
        assert (np.load(d / f"{name}.npy") == np.load(dm.cache_path / f"{name}.npy")).all(), name


def test_batches_shapes_dtypes_and_order(dm):
    dense, sparse, label = next(iter(dm.train_dataloader()))
    assert dense.dtype == torch.float32 and dense.shape == (4096, 13)
    assert sparse.dtype == torch.int64 and sparse.shape == (4096, 26)
    assert label.dtype == torch.float32 and label.shape == (4096,)
    raw = np.load(dm.cache_path / "dense.npy")
    a, b = dm.split_range("val")
    batches = list(dm.val_dataloader())
    got = torch.cat([x[0] for x in batches]).numpy()
    assert np.allclose(got, np.log1p(raw[a:b].astype(np.float32)))  # in order, log1p applied
    assert sum(len(x[2]) for x in dm.test_dataloader()) == np.subtract(
        *dm.split_range("test")[::-1]
    )
    sizes = torch.tensor(dm.table_sizes)
    assert (torch.cat([x[1] for x in batches]) < sizes).all()


def test_train_shuffles_per_epoch_and_covers_the_split(dm):
    a, b = dm.split_range("train")
    s = ShardedBatchSampler(a, b, 4096, shuffle=True, seed=0)
    e0 = np.concatenate(list(s))
    s.set_epoch(1)
    e1 = np.concatenate(list(s))
    assert sorted(e0.tolist()) == list(range(a, b)) == sorted(e1.tolist())
    assert not (e0 == e1).all()
    s.set_epoch(0)
    assert (np.concatenate(list(s)) == e0).all()  # deterministic per epoch


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_shards_cover_each_row_once(dm, world):
    a, b = dm.split_range("test")
    rows = []
    for rank in range(world):
        for batch in ShardedBatchSampler(a, b, 999, shuffle=False, rank=rank, world_size=world):
            rows.extend(range(*batch))
    assert sorted(rows) == list(range(a, b)) and len(rows) == b - a
    ta, tb = dm.split_range("train")
    shards = [
        np.concatenate(
            list(ShardedBatchSampler(ta, tb, 4096, shuffle=True, rank=r, world_size=world))
        )
        for r in range(world)
    ]
    allrows = np.concatenate(shards)
    assert len(np.unique(allrows)) == len(allrows) >= (tb - ta) - world + 1
    assert (
        len(
            {
                len(list(ShardedBatchSampler(ta, tb, 4096, shuffle=True, rank=r, world_size=world)))
                for r in range(world)
            }
        )
        == 1
    )


def test_num_workers_reopens_the_memory_maps(dm):
    loader = dm.dataloader("val", rank=0, world_size=1)
    ref = [x[1] for x in loader]
    w = CriteoDataModule(cache_dir=dm.cache_dir, num_workers=1, eval_batch_size=1000, **TINY)
    w.setup()
    got = [x[1] for x in w.val_dataloader()]
    assert all((x == y).all() for x, y in zip(ref, got)) and len(ref) == len(got)


def test_constructor_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="data.source"):
        CriteoDataModule(source="criteo")
    with pytest.raises(ValueError, match="data.path"):
        CriteoDataModule(source="kaggle")
    with pytest.raises(FileNotFoundError, match="data.path"):
        CriteoDataModule(
            source="kaggle", path=str(tmp_path / "missing.txt"), cache_dir=str(tmp_path)
        ).prepare_data()


def test_unlabelled_kaggle_test_file_preprocesses_but_does_not_train(tmp_path):
    from pathlib import Path

    src = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "criteo-samples"
        / "test-unlabelled-first1000.tsv"
    )
    dm = CriteoDataModule(source="kaggle", path=str(src), cache_dir=str(tmp_path))
    dm.setup()
    assert len(dm.table_sizes) == 26 and not dm.meta["has_label"]
    with pytest.raises(ValueError, match="has no labels"):
        dm.train_dataloader()
