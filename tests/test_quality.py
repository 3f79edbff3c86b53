"""The quality claim, CI-sized: a small DLRM trained on the 'interactions' teacher's data learns
from the categorical features what the teacher planted, and the same run with its tables frozen at
their initial values falls short, so the test fails when the model stops learning from them.

THRESHOLD is the measured test AUC of the dot run minus MARGIN. The interaction switched off
('cat': the same inputs, tables and MLPs, no pairwise products) is not tested below it: at this
size it was measured level with dot (see MEASURED), so such a test could not fail for the right
reason; what the interaction buys at full size is benchmarks/teacher.py's to measure.
"""

import lightning as L
import pytest
import torch

from lit_dlrm.data import CriteoDataModule
from lit_dlrm.module import DLRMModule

DATA = dict(synthetic_rows=60_000, max_table_size=100, batch_size=256, eval_batch_size=8192)
MODEL = dict(optimizer="adagrad", lr=0.02, embedding_dim=8, bottom_mlp=[32], top_mlp=[32])
EPOCHS = 3
# Test AUC measured with this file's settings (one torch thread; data seed 0): dot 0.6818, cat
# 0.6819, frozen 0.6385; the teacher's own cuts on that test split: dense only 0.6247, main effects
# 0.7049, Bayes 0.8689. With data seed 1: dot 0.7027, frozen 0.6413.
MEASURED_DOT = 0.6818
# The margin: the dot run's spread over the two data seeds (0.02); frozen sits 0.043 below dot.
MARGIN = 0.02
THRESHOLD = MEASURED_DOT - MARGIN


def trained_auc(cache: str, variant: str, seed: int = 0) -> float:
    """Test AUC after EPOCHS epochs of ``variant``: "dot", "cat" or "frozen" (dot, its tables kept
    at their initial values)."""
    L.seed_everything(seed, verbose=False)
    data = CriteoDataModule(cache_dir=cache, teacher="interactions", seed=seed, **DATA)
    data.prepare_data()
    data.setup()
    module = DLRMModule(data.table_sizes, interaction="cat" if variant == "cat" else "dot", **MODEL)
    if variant == "frozen":
        for table in module.model.emb_l:
            table.weight.requires_grad_(False)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    return metrics["test/auc"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def one_thread():
    """The figures above were measured on one thread (and a loaded machine runs faster so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_trained_model_reaches_the_threshold(cache, one_thread):
    assert trained_auc(cache, "dot") >= THRESHOLD


def test_with_its_tables_frozen_it_falls_short(cache, one_thread):
    assert trained_auc(cache, "frozen") < THRESHOLD
