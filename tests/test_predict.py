"""Scoring a Criteo-format file: predict_step, the vocabulary of the training data, the CSV."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from lit_dlrm.cli import predict
from lit_dlrm.data import CriteoBatches, CriteoDataModule, SyntheticConfig, write_tsv
from lit_dlrm.data.criteo import read_file, write_kaggle_tsv
from lit_dlrm.module import DLRMModule

ROWS = SyntheticConfig(rows=14000, max_table_size=300)  # the tiny data of conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data_args):
    """(a training checkpoint carrying its data options, the data, its rows as Kaggle text)."""
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    data.setup()
    torch.manual_seed(0)
    module = DLRMModule(data.table_sizes)
    root = tmp_path_factory.mktemp("predict")
    ckpt = root / "model.ckpt"
    # the layout Lightning writes: the module's state and the DataModule's hyperparameters
    torch.save(
        {
            "pytorch-lightning_version": L.__version__,
            "state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
            "datamodule_hyper_parameters": dict(data.hparams),
        },
        ckpt,
    )
    return ckpt, data, write_tsv(ROWS, root / "rows.tsv")


def model_probabilities(ckpt, data, rows: slice) -> np.ndarray:
    module = DLRMModule.from_weights(ckpt).eval()
    dense, sparse, _ = CriteoBatches(data.cache_path)[(rows.start, rows.stop)]
    with torch.no_grad():
        return torch.sigmoid(module(dense, sparse)).numpy()


def test_predict_step_gives_probabilities(trained):
    ckpt, data, _ = trained
    module = DLRMModule.from_weights(ckpt)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    a, b = data.split_range("test")
    (probs,) = trainer.predict(module, dataloaders=[data.dataloader("test", rank=0, world_size=1)])
    np.testing.assert_allclose(
        probs.numpy(), model_probabilities(ckpt, data, slice(a, b)), atol=1e-6
    )


def test_predict_scores_a_file_with_the_checkpoints_own_data(trained, tmp_path, capsys):
    ckpt, data, rows = trained
    out = tmp_path / "p.csv"
    predict([f"--rows={rows}", f"--ckpt_path={ckpt}", f"--out={out}", "--accelerator=cpu"])
    assert "14000 rows scored" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns) == ["row", "probability", "label"]
    assert (table.row.to_numpy() == np.arange(14000)).all()
    # the same rows through the training data's cache: same ids, same dense transform
    want = model_probabilities(ckpt, data, slice(0, 14000))
    np.testing.assert_allclose(table.probability.to_numpy(), want, rtol=0, atol=1e-6)
    label = np.load(data.cache_path / "label.npy")
    assert (table.label.to_numpy() == label).all()


def test_unseen_values_get_a_zero_embedding_and_unlabelled_files_no_label(trained, tmp_path):
    ckpt, data, rows = trained
    block, _ = read_file(rows)
    n = 50
    cat = block.cat[:n].copy()
    cat[:, 3] = np.uint32(0xFFFFFFF0) - np.arange(n, dtype=np.uint32)  # values training never had
    write_kaggle_tsv(tmp_path / "test.txt", None, block.dense[:n], cat)
    out = tmp_path / "p.csv"
    predict([f"--rows={tmp_path / 'test.txt'}", f"--ckpt_path={ckpt}", f"--out={out}"])
    table = pd.read_csv(out)
    assert list(table.columns) == ["row", "probability"]
    # expected: the cached rows with table 3's embedding replaced by zeros
    module = DLRMModule.from_weights(ckpt).eval()
    dense, sparse, _ = CriteoBatches(data.cache_path)[(0, n)]
    with torch.no_grad():
        model = module.model
        emb = model.embed(sparse)
        emb[3] = torch.zeros_like(emb[3])
        want = torch.sigmoid(model.top_l(model.interact(model.bot_l(dense), emb)).squeeze(1))
    np.testing.assert_allclose(table.probability.to_numpy(), want.numpy(), rtol=0, atol=1e-6)


def test_bad_rows_and_checkpoints_are_one_line_errors(trained, tmp_path, capsys):
    ckpt, _, _ = trained
    with pytest.raises(SystemExit):
        predict([f"--rows={tmp_path / 'none.txt'}", f"--ckpt_path={ckpt}"])
    assert "--rows: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict([f"--rows={ckpt}", f"--ckpt_path={tmp_path / 'none.ckpt'}"])
    assert "--ckpt_path: " in capsys.readouterr().err
