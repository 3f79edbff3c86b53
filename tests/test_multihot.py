"""Multi-hot bags: one id per bag is the one-hot batch; a tiny multi-hot model trains and sweeps
through the command lines unchanged."""

import format_writers as fw
import numpy as np
import pytest
import torch

from lit_dlrm.bags import Bags
from lit_dlrm.cli import sweep, train
from lit_dlrm.data import SyntheticConfig, read_file, write_tsv
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


@pytest.fixture(scope="module")
def multihot_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihot")
    tsv = write_tsv(SyntheticConfig(rows=4000, max_table_size=200, seed=5), root / "t.txt")
    block, _ = read_file(tsv)
    cuts = [1500, 3000]
    days = list(
        zip(np.split(block.label, cuts), np.split(block.dense, cuts), np.split(block.cat, cuts))
    )
    npy = fw.write_torchrec_npy(root / "npy", days, contiguous=False)
    sizes = [1, 3, 2, 5] + [1] * 22
    return fw.write_multihot(root / "mh", npy, fw.multihot_tables([50] * 26, sizes)), root


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
