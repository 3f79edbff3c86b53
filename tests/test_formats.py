"""dlrm's and TorchRec's processed formats, written from the same raw rows by writers that follow
each tool's source (tests/format_writers.py), give the raw text path's batches (after each
format's documented transform) through the same CriteoDataModule, with each tool's splits."""

import format_writers as fw
import numpy as np
import pytest
import torch

from lit_dlrm.bags import Bags
from lit_dlrm.data import CriteoDataModule, CriteoFormatError, SyntheticConfig, read_file, write_tsv
from lit_dlrm.data.datamodule import CriteoBatches, dense_features
from lit_dlrm.data.formats import multihot_tables, torchrec_dense

DAY_ROWS = [700, 900, 500, 601]  # the last day is split (odd: ceil goes to the first half)
MOD = 97  # dlrm's max_ind_range / TorchRec's hashes: small, so that ids collide
EVAL_BATCH = 113  # batches that cross day boundaries


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The raw TSV, its parsed rows cut into days, and a cache directory."""
    root = tmp_path_factory.mktemp("formats")
    tsv = write_tsv(SyntheticConfig(rows=sum(DAY_ROWS), max_table_size=300, seed=3), root / "t.txt")
    block, _ = read_file(tsv)
    cuts = np.cumsum(DAY_ROWS)[:-1]
    days = list(
        zip(np.split(block.label, cuts), np.split(block.dense, cuts), np.split(block.cat, cuts))
    )
    return {"tsv": tsv, "days": days, "block": block, "root": root, "cache": root / "cache"}


def module(raw, source, path, **kw) -> CriteoDataModule:
    dm = CriteoDataModule(
        source=source,
        path=str(path),
        cache_dir=str(raw["cache"]),
        batch_size=64,
        eval_batch_size=EVAL_BATCH,
        shuffle=False,
        **kw,
    )
    dm.prepare_data()
    dm.setup()
    return dm


def split_arrays(dm, split):
    """dense, sparse (or Bags list), label of a whole split through its loader."""
    batches = list(dm.dataloader(split, shuffle=False))
    dense = torch.cat([b[0] for b in batches])
    label = torch.cat([b[2] for b in batches])
    sparse = [b[1] for b in batches]
    if isinstance(sparse[0], torch.Tensor):
        sparse = torch.cat(sparse)
    return dense, sparse, label


def text_rows(raw, a, b, **kw):
    """The raw text path's (dense, sparse, label) of rows [a, b)."""
    dm = module(raw, "kaggle", raw["tsv"], **kw)
    return CriteoBatches(dm.cache_path)[(a, b)]


def dlrm_splits():
    n = sum(DAY_ROWS)
    start = n - DAY_ROWS[-1]
    mid = start + (DAY_ROWS[-1] + 1) // 2
    return {"train": (0, start), "test": (start, mid), "val": (mid, n)}


@pytest.mark.parametrize("kind", ["reordered", "processed", "bin"])
def test_dlrm_formats_equal_the_text_path(raw, tmp_path, kind):
    prefix = fw.write_dlrm_days(tmp_path / "npz", raw["days"], MOD, reordered=kind != "processed")
    if kind == "bin":
        dm = module(raw, "dlrm_bin", fw.write_dlrm_bin(tmp_path / "bin", prefix))
    else:
        dm = module(raw, "dlrm_terabyte", prefix)
        assert dm.meta["days"] == np.cumsum([0, *DAY_ROWS]).tolist()
    text = module(raw, "kaggle", raw["tsv"], max_ind_range=MOD)
    assert dm.table_sizes == text.table_sizes
    for split, (a, b) in dlrm_splits().items():
        got = split_arrays(dm, split)
        want = CriteoBatches(text.cache_path)[(a, b)]
        for g, w in zip(got, want):
            assert torch.equal(g, w), (kind, split)


def test_dlrm_bin_is_read_in_place(raw, tmp_path):
    prefix = fw.write_dlrm_days(tmp_path / "npz", raw["days"], MOD, reordered=True)
    dm = module(raw, "dlrm_bin", fw.write_dlrm_bin(tmp_path / "bin", prefix))
    assert not list(dm.cache_path.glob("*.npy"))  # an index, no copy of the rows
    assert [p["rows"] for p in dm.meta["parts"]] == [2100, 301, 300]
    val = tmp_path / "bin" / "val_data.bin"
    val.write_bytes(val.read_bytes()[: 40 * 4 * 10])  # changed: a new index, not a stale one
    again = module(raw, "dlrm_bin", tmp_path / "bin" / "train_data.bin")
    assert again.cache_path != dm.cache_path
    assert [p["rows"] for p in again.meta["parts"]] == [2100, 301, 10]


def test_torchrec_npy_is_tsv_to_npys_of_the_raw_rows(raw, tmp_path):
    directory = fw.write_torchrec_npy(tmp_path / "npy", raw["days"], contiguous=False)
    dm = module(raw, "torchrec_npy", directory, max_ind_range=MOD)
    assert dm.table_sizes == [MOD] * 26
    n = sum(DAY_ROWS)
    start, mid = n - DAY_ROWS[-1], n - DAY_ROWS[-1] + (DAY_ROWS[-1] + 1) // 2
    # TorchRec's halves: val first, test second (dlrm's are the other way round)
    assert dm.meta["splits"] == {"train": [0, start], "val": [start, mid], "test": [mid, n]}
    dense = np.concatenate([torchrec_dense(x) for _, x, _ in raw["days"]])
    cat = raw["block"].cat.astype(np.int64) % MOD
    text = text_rows(raw, 0, n, max_ind_range=MOD)
    for split, (a, b) in dm.meta["splits"].items():
        d, s, y = split_arrays(dm, split)
        assert torch.equal(d, torch.from_numpy(dense[a:b]))
        assert torch.equal(s, torch.from_numpy(cat[a:b]))
        assert torch.equal(y, text[2][a:b])
    # the same categories as the text path's ids: a renumbering per table, nothing merged
    s = torch.cat([split_arrays(dm, k)[1] for k in ("train", "val", "test")])
    for j in range(26):
        pairs = np.unique(np.stack([s[:, j].numpy(), text[1][:, j].numpy()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_torchrec_contiguous_ids_are_the_text_path_ids_plus_2(raw, tmp_path):
    directory = fw.write_torchrec_npy(tmp_path / "npy", raw["days"], contiguous=True)
    dm = module(raw, "torchrec_npy_contiguous", directory)
    text = module(raw, "kaggle", raw["tsv"])
    assert dm.table_sizes == [t + 2 for t in text.table_sizes]  # max id + 1; ids 0, 1 unused
    n = sum(DAY_ROWS)
    want = CriteoBatches(text.cache_path)[(0, n)]
    for split, (a, b) in dm.meta["splits"].items():
        _, s, y = split_arrays(dm, split)
        assert torch.equal(s - 2, want[1][a:b])
        assert torch.equal(y, want[2][a:b])


def test_multihot_bags_hold_the_one_hot_id_first(raw, tmp_path):
    npy = fw.write_torchrec_npy(tmp_path / "npy", raw["days"], contiguous=False)
    sizes = [3, 1, 2] + [1] * 23
    tables = multihot_tables([MOD] * 26, sizes)
    directory = fw.write_multihot(tmp_path / "multihot", raw["days"], tables)
    dm = module(raw, "torchrec_multihot", directory, num_embeddings_per_feature=[MOD] * 26)
    one_hot = module(raw, "torchrec_npy", npy, max_ind_range=MOD)
    for split in ("train", "val", "test"):
        d, bags, y = split_arrays(dm, split)
        d1, s1, y1 = split_arrays(one_hot, split)
        assert torch.equal(d, d1) and torch.equal(y, y1)
        rows = 0
        for b in bags:
            assert isinstance(b, Bags)
            assert b.lengths.tolist() == [[k] * b.num_rows for k in sizes]
            for j, (ids, offsets) in enumerate(b.per_table()):
                first = ids[offsets]
                assert torch.equal(first, s1[rows : rows + b.num_rows, j])
                want = torch.from_numpy(tables[j][s1[rows : rows + b.num_rows, j].numpy()])
                assert torch.equal(ids.view(-1, sizes[j]), want.long())
            rows += b.num_rows


def test_bad_inputs_are_named(raw, tmp_path):
    directory = fw.write_torchrec_npy(tmp_path / "npy", raw["days"], contiguous=False)
    with pytest.raises(ValueError, match="num_embeddings_per_feature"):
        module(raw, "torchrec_npy", directory)
    with pytest.raises(FileNotFoundError, match="day_0_sparse_multi_hot.npz"):
        module(raw, "torchrec_multihot", directory)
    (directory / "day_1_labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="day_1_labels.npy"):
        module(raw, "torchrec_npy", directory, max_ind_range=MOD)
    compressed = tmp_path / "mh"
    compressed.mkdir()
    for d in range(2):
        np.savez_compressed(
            compressed / f"day_{d}_sparse_multi_hot.npz",
            **{str(j): np.zeros((3, 1), np.int32) for j in range(26)},
        )
        np.save(compressed / f"day_{d}_dense.npy", np.zeros((3, 13), np.float32))
        np.save(compressed / f"day_{d}_labels.npy", np.zeros((3, 1), np.int32))
    with pytest.raises(CriteoFormatError, match="compressed"):
        module(raw, "torchrec_multihot", compressed)
    with pytest.raises(ValueError, match="only TorchRec"):
        CriteoDataModule(source="kaggle", path="x", num_embeddings_per_feature=[2] * 26)


def test_dense_features_of_dlrm_bin_match_dlrm_loader():
    # data_loader_terabyte._transform_features: torch.log(x.float() + 1)
    x = np.array([[0, 1, 5, 1_000_000] + [2] * 9], dtype=np.int32)
    assert torch.equal(dense_features(x), torch.log(torch.tensor(x, dtype=torch.float) + 1))


def test_worker_processes_read_the_same_batches(raw, tmp_path):
    directory = fw.write_multihot(
        tmp_path / "mh", raw["days"], multihot_tables([MOD] * 26, [2] * 26)
    )
    dm = module(raw, "torchrec_multihot", directory, num_workers=1)
    main = next(iter(module(raw, "torchrec_multihot", directory).dataloader("val")))
    got = next(iter(dm.dataloader("val")))
    assert torch.equal(got[0], main[0]) and torch.equal(got[2], main[2])
    assert torch.equal(got[1].values, main[1].values)
    assert torch.equal(got[1].lengths, main[1].lengths)
