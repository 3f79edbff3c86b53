"""Shared fixtures: a tiny synthetic data set, built once per test session."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="module", autouse=True)
def _fresh_function_classes():
    """Let each test module run its own copy of scripts/sweep.py (loaded with runpy).

    The script hands LightningCLI a function (`trained_model`); jsonargparse turns it into a class
    registered in lightning.pytorch.cli under the function's name, and refuses another function of
    the same name ("already defines 'trained_model_class'"). So a second test module calling its
    own copy of `main` failed; the previous module's registration is dropped here.
    """
    import lightning.pytorch.cli as lightning_cli

    for name, value in list(vars(lightning_cli).items()):
        if isinstance(value, type) and hasattr(value, "wrapped_function"):
            delattr(lightning_cli, name)
    yield


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_data_args) -> Path:
    """An untrained model over the tiny data's tables, saved as a bare state_dict (for sweeps)."""
    import torch

    from lit_dlrm.data import CriteoDataModule
    from lit_dlrm.module import DLRMModule

    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(DLRMModule(data.table_sizes).model.state_dict(), path)
    return path
