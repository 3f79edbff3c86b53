"""Criteo data: raw Kaggle files, dlrm's and TorchRec's processed files, a synthetic default.

    criteo.py      text parsing (TSV/CSV/gz; errors name file and line), Kaggle TSV writer
    preprocess.py  streaming preprocessing into the memory-mapped cache (ids, options, splits)
    terabyte.py    Criteo Terabyte day files (dlrm's rules, per-day parallel and resumable) and
                   a Terabyte-shaped synthetic writer
    npz.py         facebookresearch/dlrm's processed Kaggle .npz and its Terabyte day files
    formats.py     dlrm's MLPerf binary, TorchRec's per-day npy and multi-hot npz, read in place
    synthetic.py   Kaggle-shaped synthetic rows with a planted teacher (known click probabilities)
    datamodule.py  CriteoDataModule: prepare_data builds the cache, setup reads it, sharded loaders
    kaggle.py      facts about the Kaggle data set (table sizes, ...)

Names are imported lazily, so the numpy-only parts (parsing, preprocessing) do not import torch.
"""

import importlib

_WHERE = {
    "CriteoDataModule": "datamodule",
    "CriteoBatches": "datamodule",
    "ShardedBatchSampler": "datamodule",
    "dense_features": "datamodule",
    "CriteoFormatError": "criteo",
    "read_file": "criteo",
    "sniff_format": "criteo",
    "write_kaggle_tsv": "criteo",
    "KAGGLE_TABLE_SIZES": "kaggle",
    "NUM_DENSE": "kaggle",
    "NUM_SPARSE": "kaggle",
    "PreprocessOptions": "preprocess",
    "cached_text": "preprocess",
    "split_ranges": "preprocess",
    "SyntheticConfig": "synthetic",
    "KaggleFileConfig": "synthetic",
    "Teacher": "synthetic",
    "cached_synthetic": "synthetic",
    "write_tsv": "synthetic",
    "cached_npz": "npz",
    "cached_terabyte": "terabyte",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
