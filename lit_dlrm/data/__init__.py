"""Criteo data: raw Kaggle files, DLRM's processed .npz and a synthetic default behind one DataModule.

    criteo.py      text parsing (TSV/CSV/gz, quirks, errors naming file and line), Kaggle TSV writer
    preprocess.py  streaming preprocessing into the memory-mapped cache (ids, options, splits)
    npz.py         facebookresearch/dlrm's kaggleAdDisplayChallenge_processed.npz
    synthetic.py   Kaggle-shaped synthetic rows with a planted teacher (known click probabilities)
    datamodule.py  CriteoDataModule: the cache behind batched, sharded dataloaders
    kaggle.py      facts about the Kaggle data set (table sizes, ...)
"""

from .criteo import CriteoFormatError, read_file, sniff_format, write_kaggle_tsv
from .datamodule import CriteoBatches, CriteoDataModule, ShardedBatchSampler
from .kaggle import KAGGLE_TABLE_SIZES, NUM_DENSE, NUM_SPARSE
from .preprocess import PreprocessOptions, cached_text, split_ranges
from .synthetic import SyntheticConfig, Teacher, cached_synthetic, write_tsv

__all__ = [
    "CriteoDataModule", "CriteoBatches", "ShardedBatchSampler", "CriteoFormatError", "read_file",
    "sniff_format", "write_kaggle_tsv", "KAGGLE_TABLE_SIZES", "NUM_DENSE", "NUM_SPARSE",
    "PreprocessOptions", "cached_text", "split_ranges", "SyntheticConfig", "Teacher",
    "cached_synthetic", "write_tsv",
]
