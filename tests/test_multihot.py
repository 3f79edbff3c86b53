"""Multi-hot bags: one id per bag is the one-hot batch; the synthetic Terabyte generator's multi-hot
set holds the day files' rows; a tiny multi-hot model trains and sweeps on it through the command
lines unchanged."""

import numpy as np
import pytest
import torch

from lit_dlrm.bags import Bags
from lit_dlrm.cli import sweep, train
from lit_dlrm.data import CriteoDataModule, read_file, terabyte
from lit_dlrm.model import DLRM


def test_bags_of_one_id_give_the_one_hot_logits():
    torch.manual_seed(0)
    model = DLRM([7, 30, 5] * 8 + [11, 3], bottom_mlp=[8], top_mlp=[8])
    dense = torch.rand(9, 13)
    sparse = torch.stack([torch.randint(0, t.num_embeddings, (9,)) for t in model.emb_l], 1)
    bags = Bags.from_one_hot(sparse)
    assert torch.equal(model(dense, bags), model(dense, sparse))
    assert torch.equal(model(dense[2:5], bags[2:5]), model(dense[2:5], sparse[2:5]))


def test_bags_sum_their_ids_and_empty_bags_are_zero():
    model = DLRM([6] * 26, embedding_dim=4, bottom_mlp=[4], top_mlp=[4])
    lengths = torch.tensor([[2, 0, 1]] * 26)  # row 0: two ids, row 1: none, row 2: one
    values = torch.tensor([1, 4, 5] * 26)
    emb = model.embed(Bags(values, lengths))
    w = model.emb_l[0].weight
    assert torch.allclose(emb[0][0], w[1] + w[4])
    assert torch.equal(emb[0][1], torch.zeros(4))
    assert torch.equal(emb[0][2], w[5])
    sliced = Bags(values, lengths)[1:3]
    assert sliced.lengths.tolist() == [[0, 1]] * 26 and sliced.values.tolist() == [5] * 26


def test_bags_refuse_inconsistent_shapes():
    with pytest.raises(ValueError, match="sum of lengths"):
        Bags(torch.arange(3), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="row slices"):
        Bags.from_one_hot(torch.zeros(3, 26, dtype=torch.long))[[0, 1]]


SIZES = [1, 3, 2, 5] + [1] * 22  # bag size per table
MAX_TABLE = 200


@pytest.fixture(scope="module")
def multihot_dir(tmp_path_factory):
    """A tiny Terabyte-shaped set from the generator's command line: day files and, from the same
    rows, MLPerf's multi-hot set beside them."""
    root = tmp_path_factory.mktemp("multihot")
    out = root / "days"
    sizes = ",".join(map(str, SIZES))
    terabyte.main(
        ["write", str(out), "--days", "3", "--rows-per-day", "1500", "--seed", "5"]
        + ["--max-table-size", str(MAX_TABLE), "--multi-hot", sizes]
    )
    return out, root


def test_generated_bags_are_the_day_files_rows(multihot_dir):
    """Bags as sized; column 0 of every bag (all of a bag of size 1) is the one-hot id, the raw
    hash of the day file modulo the table size, as MLPerf's rule makes it; labels and dense the
    day files' under TorchRec's rule."""
    directory, root = multihot_dir
    days = [read_file(p)[0] for p in terabyte.day_files(directory)]  # the text parser's rows
    label = np.concatenate([d.label for d in days])
    one_hot = np.concatenate([d.cat for d in days]).astype(np.int64) % np.array(
        terabyte.TerabyteSyntheticConfig(max_table_size=MAX_TABLE).table_sizes()
    )
    dense = []
    for d in days:  # tsv_to_npys: log(x - m + 2), m the day file's smallest value
        dense.append(np.log((d.dense - d.dense.min() + 2).astype(np.float64)))
    dense = np.concatenate(dense)
    dm = CriteoDataModule(
        source="torchrec_multihot",
        path=str(directory),
        cache_dir=str(root / "cache"),
        batch_size=256,
        eval_batch_size=700,
        shuffle=False,
    )
    dm.prepare_data()
    dm.setup()
    assert dm.meta["days"] == [0, 1500, 3000, 4500]
    for split, (a, b) in dm.meta["splits"].items():
        rows = a
        for d, bags, y in dm.dataloader(split, shuffle=False):
            n = bags.num_rows
            assert bags.lengths.tolist() == [[k] * n for k in SIZES]
            assert torch.equal(y, torch.from_numpy(label[rows : rows + n]).float())
            np.testing.assert_allclose(d.numpy(), dense[rows : rows + n], rtol=1e-6)
            for j, (ids, offsets) in enumerate(bags.per_table()):
                assert torch.equal(ids[offsets], torch.from_numpy(one_hot[rows : rows + n, j]))
                assert int(ids.max()) < dm.table_sizes[j] <= MAX_TABLE
            rows += n
        assert rows == b, split


def test_multihot_model_trains_and_sweeps(multihot_dir):
    directory, root = multihot_dir
    data = [
        "--data.source=torchrec_multihot",
        f"--data.path={directory}",
        f"--data.cache_dir={root / 'cache'}",
        "--data.batch_size=256",
        "--data.eval_batch_size=512",
    ]
    train(
        [
            *data,
            "--trainer.max_epochs=1",
            f"--trainer.logger.init_args.save_dir={root / 'runs'}",
            "--trainer.enable_progress_bar=false",
            "--model.bottom_mlp=[16]",
            "--model.top_mlp=[16]",
        ]
    )
    ckpt = next((root / "runs" / "train" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    out = root / "sweep"
    sweep(
        [
            f"--ckpt_path={ckpt}",
            f"--out_dir={out}",
            "--sweep.sparsity_level=[0.0, 0.9]",
            "--sweep.norm=[L1]",
            "--sweep.sparse_block_shape=[[1, 4]]",
            "--sweep.studies=[]",
            "--timing.warmup=0",
            "--timing.repeats=2",
            "--timing.batch_size=128",
        ]
    )
    metrics = next(out.glob("*metrics*.csv")).read_text().splitlines()
    assert len(metrics) == 3  # header and two grid points


def test_generator_refuses_bad_bag_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        terabyte.main(["write", str(tmp_path / "x"), "--days", "2", "--multi-hot", "1,2"])
    assert "26 comma-separated bag sizes >= 1, got '1,2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="one per table"):
        terabyte.write_days(tmp_path / "y", days=2, rows_per_day=5, multi_hot=[1] * 25)
    assert not (tmp_path / "y").exists()
