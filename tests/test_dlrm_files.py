"""Files exactly as facebookresearch/dlrm writes them: its processed Kaggle .npz and its
`--save-model` checkpoints, made by dlrm's own calls (`tests/dlrm_reference.py`), read as they
are; the model sees the same inputs as in dlrm and gives the same probabilities."""

import zipfile

import dlrm_reference as ref
import numpy as np
import pytest
import torch

from lit_dlrm.checkpoint import load_state_dict
from lit_dlrm.data import CriteoDataModule, CriteoFormatError, dense_features
from lit_dlrm.data.npz import iter_npz_blocks
from lit_dlrm.module import DLRMModule

ROWS = 1400  # 200 a day: train 1200, test 100, val 100
BATCH = 64  # dlrm's test batch size here (not a divisor of the test split: a short last batch)
# dlrm builds batches from lists of numpy rows, which torch says is slow; it is dlrm's code
pytestmark = pytest.mark.filterwarnings(
    "ignore:Creating a tensor from a list of numpy.ndarrays is extremely slow"
)


def write_kaggle_text(path, rows=ROWS, seed=0):
    """A Kaggle train.txt: skewed categories (so ids repeat), missing fields, negative integers.
    Hashes stay below 2**31: dlrm's parser stores them in int32 (numpy 2 refuses larger ones)."""
    rng = np.random.default_rng(seed)
    pools = [rng.integers(0, 2**31, size=int(rng.integers(2, 60))) for _ in range(26)]
    with open(path, "w") as f:
        for _ in range(rows):
            label = str(int(rng.random() < 0.3))
            ints = [
                "" if rng.random() < 0.1 else str(int(rng.integers(-3, 2000) ** rng.integers(1, 3)))
                for _ in range(13)
            ]
            cats = [
                "" if rng.random() < 0.05 else f"{p[min(int(rng.zipf(1.5)) - 1, len(p) - 1)]:08x}"
                for p in pools
            ]
            f.write("\t".join([label, *ints, *cats]) + "\n")


@pytest.fixture(scope="module")
def dlrm_files(tmp_path_factory):
    """(train.txt, dlrm's processed .npz of it, a dlrm --save-model checkpoint trained on it)."""
    d = tmp_path_factory.mktemp("dlrm")
    text = d / "train.txt"
    write_kaggle_text(text)
    npz = ref.preprocess_kaggle(text)
    with np.load(npz) as data:
        counts = data["counts"]
    np.random.seed(0)
    torch.manual_seed(0)
    model = ref.make_dlrm(counts)
    train = ref.split_batches(npz, "train", 128)
    test = ref.split_batches(npz, "test", BATCH)
    ckpt = d / "dlrm_kaggle.pt"
    ref.train_and_save(model, train, test, ckpt)
    return text, npz, ckpt


def _member_header(npz, key):
    with zipfile.ZipFile(npz) as zf, zf.open(f"{key}.npy") as f:
        np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    return zf.getinfo(f"{key}.npy").compress_type, dtype, fortran


def test_fixture_has_dlrms_layout(dlrm_files):
    # What dlrm writes, and what lit_dlrm once refused: X_cat float64 in Fortran order.
    _, npz, _ = dlrm_files
    assert _member_header(npz, "X_cat") == (zipfile.ZIP_DEFLATED, np.dtype("float64"), True)
    assert _member_header(npz, "X_int") == (zipfile.ZIP_DEFLATED, np.dtype("int32"), False)
    assert _member_header(npz, "y")[1:] == (np.dtype("int32"), False)
    assert _member_header(npz, "counts")[1:] == (np.dtype("int32"), False)


def test_dlrm_npz_gives_the_same_cache_as_the_text_it_came_from(dlrm_files, tmp_path):
    text, npz, _ = dlrm_files
    a = CriteoDataModule(source="dlrm_npz", path=str(npz), cache_dir=str(tmp_path / "a"))
    b = CriteoDataModule(source="kaggle", path=str(text), cache_dir=str(tmp_path / "b"))
    a.setup(), b.setup()
    assert a.table_sizes == b.table_sizes and a.meta["splits"] == b.meta["splits"]
    for name in ("dense", "sparse", "label"):
        np.testing.assert_array_equal(
            np.load(a.cache_path / f"{name}.npy"), np.load(b.cache_path / f"{name}.npy")
        )
    with np.load(npz) as data:  # and what dlrm itself loads from its file
        np.testing.assert_array_equal(np.load(a.cache_path / "sparse.npy"), data["X_cat"])
        np.testing.assert_array_equal(np.load(a.cache_path / "dense.npy"), data["X_int"])
    # the Fortran-ordered member was staged in a scratch file, gone with the build
    assert sorted(p.name for p in a.cache_path.iterdir()) == [
        "dense.npy",
        "label.npy",
        "meta.json",
        "sparse.npy",
    ]


@pytest.mark.parametrize("rows_per_block", [1, 37, 10_000])
def test_row_blocks_of_a_fortran_member_are_its_rows(dlrm_files, tmp_path, rows_per_block):
    _, npz, _ = dlrm_files
    blocks = list(iter_npz_blocks(npz, tmp_path, rows_per_block=rows_per_block))
    assert list(tmp_path.iterdir()) == []  # scratch removed once the generator is done
    with np.load(npz) as data:
        np.testing.assert_array_equal(np.concatenate([b.cat for b in blocks]), data["X_cat"])
        np.testing.assert_array_equal(np.concatenate([b.dense for b in blocks]), data["X_int"])
        np.testing.assert_array_equal(np.concatenate([b.label for b in blocks]), data["y"])


def test_truncated_or_wrong_dlrm_npz_is_refused_naming_it(dlrm_files, tmp_path):
    _, npz, _ = dlrm_files
    with np.load(npz) as data:
        arrays = dict(data)
    short = tmp_path / "short.npz"
    with zipfile.ZipFile(short, "w") as zf:  # X_cat's header promises more rows than it holds
        for key, a in arrays.items():
            if key == "X_cat":
                continue
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, a)
        with zf.open("X_cat.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": True, "shape": arrays["X_cat"].shape}
            )
            f.write(np.asfortranarray(arrays["X_cat"]).tobytes(order="F")[:-8])
    with pytest.raises(CriteoFormatError, match=r"short.npz: X_cat: truncated"):
        list(iter_npz_blocks(short, tmp_path))
    assert list(tmp_path.iterdir()) == [short]  # no scratch left behind by the error

    bad = tmp_path / "bad.npz"
    x_cat = arrays["X_cat"].copy(order="F")
    x_cat[5, 3] = arrays["counts"][3]  # one past the table
    np.savez_compressed(bad, **{**arrays, "X_cat": x_cat})
    with pytest.raises(CriteoFormatError, match=r"bad.npz: X_cat\[5, 3\]"):
        CriteoDataModule(
            source="dlrm_npz", path=str(bad), cache_dir=str(tmp_path / "c")
        ).prepare_data()


def test_dlrm_npz_splits_max_ind_range_and_missing_keys(dlrm_files, tmp_path):
    _, npz, _ = dlrm_files
    with np.load(npz) as data:
        x_cat, counts = data["X_cat"], data["counts"]
    dm = CriteoDataModule(source="dlrm_npz", path=str(npz), cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert dm.table_sizes == counts.tolist()
    assert dm.meta["splits"] == {"train": [0, 1200], "test": [1200, 1300], "val": [1300, 1400]}
    assert dm.teacher_metrics("test") is None

    dm = CriteoDataModule(
        source="dlrm_npz", path=str(npz), cache_dir=str(tmp_path / "c"), max_ind_range=7
    )
    dm.setup()
    assert dm.table_sizes == np.minimum(counts, 7).tolist()
    np.testing.assert_array_equal(np.load(dm.cache_path / "sparse.npy"), x_cat % 7)

    with zipfile.ZipFile(tmp_path / "nokeys.npz", "w") as z:
        z.writestr("counts.npy", b"")
    with pytest.raises(CriteoFormatError, match="nokeys.npz"):
        CriteoDataModule(
            source="dlrm_npz", path=str(tmp_path / "nokeys.npz"), cache_dir=str(tmp_path / "c")
        ).prepare_data()


def test_dense_transform_is_dlrms_bit_for_bit():
    rng = np.random.default_rng(1)
    raw = np.concatenate([np.arange(0, 65_000), rng.integers(0, 2**31 - 1, size=65_000)]).astype(
        np.int32
    )
    raw = rng.permutation(raw).reshape(-1, 13)
    rows = list(raw)  # dlrm's batch: a list of numpy rows
    theirs = torch.log(torch.tensor(rows, dtype=torch.float) + 1)
    ours = dense_features(raw)
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
    # the odd batch shape and one row at a time give the same bits
    assert torch.equal(dense_features(raw[:7]), theirs[:7])
    assert torch.equal(torch.cat([dense_features(r[None]) for r in raw[:50]]), theirs[:50])


def test_same_inputs_and_probabilities_as_dlrm_on_its_checkpoint(dlrm_files, tmp_path):
    _, npz, ckpt = dlrm_files
    # dlrm's side: --load-model into its network, its test batches, its forward
    theirs = ref.make_dlrm(np.load(npz)["counts"])
    theirs.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    theirs.eval()
    dlrm_batches = ref.split_batches(npz, "test", BATCH)
    # ours: the same file and checkpoint, the same batch size
    dm = CriteoDataModule(
        source="dlrm_npz", path=str(npz), cache_dir=str(tmp_path), eval_batch_size=BATCH
    )
    dm.setup()
    model = DLRMModule.from_weights(ckpt).model.eval()
    ours = list(dm.test_dataloader())
    assert len(ours) == len(dlrm_batches) > 1
    worst = 0.0
    with torch.no_grad():
        for (dense, sparse, label), (X, lS_o, lS_i, T) in zip(ours, dlrm_batches):
            assert torch.equal(dense, X)  # identical model inputs, bit for bit
            assert torch.equal(sparse, lS_i.T) and torch.equal(label, T[:, 0])
            p_ours = torch.sigmoid(model(dense, sparse))
            p_theirs = theirs(X, lS_o, lS_i)[:, 0]
            worst = max(worst, (p_ours - p_theirs).abs().max().item())
    assert worst <= 1e-6


@pytest.mark.parametrize("mlperf", [False, True])
@pytest.mark.parametrize("numpy1", [False, True])
def test_save_model_files_load_as_they_are(dlrm_files, tmp_path, mlperf, numpy1):
    _, npz, _ = dlrm_files
    np.random.seed(1)
    model = ref.make_dlrm(np.load(npz)["counts"])
    batches = ref.split_batches(npz, "val", 32)
    path = tmp_path / "dlrm.pt"
    ref.train_and_save(model, batches[:2], batches, path, mlperf=mlperf, numpy1=numpy1)
    state = load_state_dict(path)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
