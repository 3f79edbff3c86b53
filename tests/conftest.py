"""Shared fixtures: a tiny synthetic data set, built once per test session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist each of its workers (one per core) runs torch on one thread, and so do
    the processes its tests start: two workers of two threads each would fight for two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


# Small enough for seconds of training, large enough for every split to hold both labels.
TINY_DATA = [
    "--data.synthetic_rows=14000",
    "--data.max_table_size=300",
    "--data.batch_size=512",
    "--data.eval_batch_size=1024",
]


@pytest.fixture(scope="session")
def tiny_data_args(tmp_path_factory) -> list[str]:
    """CLI options of the tiny synthetic data set, with a cache shared by the whole session."""
    cache = tmp_path_factory.mktemp("cache")
    return [*TINY_DATA, f"--data.cache_dir={cache}"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_data_args) -> Path:
    """An untrained model over the tiny data's tables, saved as a bare state_dict (for sweeps)."""
    import torch

    from lit_dlrm.data import CriteoDataModule
    from lit_dlrm.module import DLRMModule

    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    data.setup()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(DLRMModule(data.table_sizes).model.state_dict(), path)
    return path
