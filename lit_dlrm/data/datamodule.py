"""`CriteoDataModule`: one LightningDataModule for synthetic Criteo, Kaggle text, dlrm's and
TorchRec's processed files.

    dm = CriteoDataModule(source="synthetic")                       # the default: no download
    dm = CriteoDataModule(source="kaggle", path="train.txt.gz")     # raw Kaggle (TSV/CSV/gz)
    dm = CriteoDataModule(source="dlrm_npz", path="kaggleAdDisplayChallenge_processed.npz")
    dm = CriteoDataModule(source="terabyte", path="criteo-terabyte/")  # day_0 .. day_23 (.gz)
    dm = CriteoDataModule(source="torchrec_npy", path="criteo_1tb_npy/", max_ind_range=40_000_000)
    dm.prepare_data(); dm.setup()                                   # what a Trainer does

`prepare_data` builds the memory-mapped cache under `cache_dir` (or finds it); `setup` reads its
metadata, after which `table_sizes`, `meta` and the loaders are available (before: RuntimeError).
A batch is whole slices of the arrays, never per-sample collate:
    dense: float32 (B, 13) = log(x + 1),  sparse: int64 (B, 26),  label: float32 (B,)
(TorchRec's files: dense as they store it; multi-hot: sparse is `lit_dlrm.bags.Bags`; see
`formats.py` for each processed format's transform and splits.)
Under DDP each rank reads its own shard (`ShardedBatchSampler`): train rows in equal shares, val
and test rows each exactly once, so metrics over a split are exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..paths import check_directory
from .kaggle import NUM_DENSE
from .preprocess import PreprocessOptions, cached_text
from .synthetic import SyntheticConfig, TeacherName, binary_metrics, cached_synthetic

log = logging.getLogger("lit_dlrm.data")

Source = Literal[
    "synthetic",
    "kaggle",
    "dlrm_npz",
    "terabyte",
    "dlrm_terabyte",
    "dlrm_bin",
    "torchrec_npy",
    "torchrec_npy_contiguous",
    "torchrec_multihot",
]
SOURCES = Source.__args__
SPLITS = ("train", "val", "test")


def dense_features(raw: np.ndarray) -> torch.Tensor:
    """float32 model input (B, 13) from raw dense integers (B, 13): facebookresearch/dlrm's
    `torch.log(torch.tensor(X_int, dtype=torch.float) + 1)`, so the same bits as dlrm's batches
    (`np.log1p` or `torch.log1p` differ from it in the last bit on a few percent of values)."""
    return torch.log(torch.from_numpy(np.array(raw, dtype=np.float32)) + 1)


class CriteoBatches(Dataset):
    """Whole batches from a cache directory: rows given by the sampler -> (dense, sparse, label).

    Picklable for worker processes: the memory maps are (re)opened lazily in each process.
    """

    def __init__(self, directory: str | Path, with_prob: bool = False):
        self.directory = Path(directory)
        self.with_prob = with_prob
        self._arrays = None

    def _open(self) -> dict:
        if self._arrays is None:
            names = ["dense", "sparse", "label"] + (["prob"] if self.with_prob else [])
            self._arrays = {k: np.load(self.directory / f"{k}.npy", mmap_mode="r") for k in names}
        return self._arrays

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def rows(self, index) -> dict[str, np.ndarray]:
        """Arrays for `index`: a (start, stop) pair or an int64 array of row numbers."""
        arrays = self._open()
        if isinstance(index, tuple):
            sel = slice(int(index[0]), int(index[1]))
            return {k: np.asarray(a[sel]) for k, a in arrays.items()}
        return {k: a[index] for k, a in arrays.items()}

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.rows(index)
        dense = dense_features(r["dense"])  # (B, 13)
        sparse = torch.from_numpy(r["sparse"].astype(np.int64))  # (B, 26)
        label = torch.from_numpy(r["label"].astype(np.float32))  # (B,)
        return dense, sparse, label


class ShardedBatchSampler(DistributedSampler):
    """This rank's batches of rows [start, end): (start, stop) pairs, or with `shuffle` sorted
    row-number arrays from the epoch's seeded permutation (`set_epoch`).

    `drop_last=True` (training): every rank gets exactly n // world_size rows, so all ranks run the
    same number of steps; the n % world_size rows left over are skipped that epoch.
    `drop_last=False` (val/test): rank r gets rows [n*r // w, n*(r+1) // w): each row exactly once.
    A `DistributedSampler` so that Lightning does not wrap it in another; it shards itself.
    `skip`: batches the next iteration leaves out (a resumed epoch: those already trained on);
    later iterations start from the first.
    """

    def __init__(
        self,
        start: int,
        end: int,
        batch_size: int,
        *,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = False,
    ):
        # (DistributedSampler.__init__ is not called: it wants a dataset and a process group.)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.start, self.end, self.batch_size = int(start), int(end), int(batch_size)
        self.shuffle, self.rank, self.num_replicas, self.seed = shuffle, rank, world_size, seed
        self.epoch = 0
        self.skip = 0
        self.drop_last = drop_last
        n = self.end - self.start
        if drop_last:  # equal shares: every rank runs the same number of steps
            bounds = [(n // world_size) * r for r in range(world_size + 1)]
        else:
            bounds = [(n * r) // world_size for r in range(world_size + 1)]
        # [lo, hi): offsets into the split (shuffle) or row numbers (contiguous slices)
        offset = 0 if shuffle else self.start
        self.lo, self.hi = offset + bounds[rank], offset + bounds[rank + 1]
        self.num_samples = self.hi - self.lo
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator:
        first, self.skip = self.skip * self.batch_size, 0
        if not self.shuffle:
            for s in range(self.lo + first, self.hi, self.batch_size):
                yield (s, min(s + self.batch_size, self.hi))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(self.end - self.start)[self.lo : self.hi] + self.start
        for s in range(first, len(perm), self.batch_size):
            yield np.sort(perm[s : s + self.batch_size])  # sorted: faster reads, same batch


class CriteoLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardedBatchSampler` whose batching (batch size,
    processes, seed, shuffle) goes into Lightning's checkpoints. A run resumed mid-epoch
    continues with the checkpoint's next batch (the sampler's ``skip``, which
    ``CriteoDataModule.train_dataloader`` sets), so it refuses, with a ValueError naming the
    options, a checkpoint whose batches were cut otherwise."""

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "batch_size": s.batch_size,
            "world_size": s.num_replicas,
            "seed": s.seed,
            "shuffle": s.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.sampler.skip and state != self.state_dict():
            raise ValueError(
                f"--ckpt_path: the checkpoint stopped {self.sampler.skip} batches into an epoch "
                f"of batches {state}; this run cuts them {self.state_dict()} (--data.batch_size, "
                "--data.seed, --data.shuffle, --trainer.devices): resume with the same, or "
                "from an end-of-epoch checkpoint"
            )


class CriteoDataModule(LightningDataModule):
    """Criteo click data from one of three sources, preprocessed once into a memory-mapped cache.

    Args:
        source: "synthetic" (default: generated, with a known teacher), "kaggle" (train.txt,
            test.txt, .gz, .csv), "dlrm_npz" (facebookresearch/dlrm's processed Kaggle .npz),
            "terabyte" (a directory of Criteo Terabyte day files day_0 .. day_23, plain or .gz),
            "dlrm_terabyte" (dlrm's Terabyte day_{i}_{reordered,processed}.npz), "dlrm_bin" (its
            MLPerf binary files), "torchrec_npy", "torchrec_npy_contiguous" (TorchRec's per-day
            npy) or "torchrec_multihot" (MLPerf DLRM-DCNv2's multi-hot npz); `formats.py`.
        path: the input: a file ("kaggle", "dlrm_npz"; "dlrm_bin": its train file), dlrm's
            prefix ("dlrm_terabyte": `.../day`, as its --raw-data-file), or a directory of day
            files ("terabyte", TorchRec's); unused for "synthetic".
        cache_dir: where caches live (relative to the current directory).
        batch_size: train batch size. eval_batch_size: val/test batch size.
        num_workers: DataLoader worker processes (0: load in the main process).
        shuffle: reshuffle the train split every epoch (seeded by `seed` and the epoch).
        max_ind_range: hash raw categorical values modulo this (None: off).
        num_embeddings_per_feature: TorchRec's files only: the 26 table sizes (raw hashes are
            taken modulo them, as TorchRec's `hashes=`); None: `max_ind_range` for raw hashes,
            the largest id + 1 for contiguous and multi-hot ids.
        min_frequency: values seen fewer times share one id per feature (1: off).
        on_bad_line: "error" (stop at the first malformed line) or "skip" (drop and count).
        synthetic_rows, max_table_size: size of the synthetic data set and its table cap.
        teacher: the synthetic teacher's preset (`synthetic.TEACHERS`): "default" or
            "interactions" (pairwise terms about half the signal instead of a quarter).
        seed: synthetic data and train shuffling.
        has_label: Kaggle text only: force labelled/unlabelled (None: detect).
        progress: show a progress bar while preprocessing (None: when attached to a terminal).
        sub_sample_rate: "terabyte" only: drop this fraction of the label-0 rows of the train
            days (dlrm's --data-sub-sample-rate), seeded by `seed`.
        preprocess_workers: "terabyte" only: day files preprocessed at once, one process each,
            each parsing with 2 threads (None: half the CPU count).
    """

    def __init__(
        self,
        source: Source = "synthetic",
        path: str | None = None,
        cache_dir: str = "data/cache",
        batch_size: int = 2048,
        eval_batch_size: int = 16384,
        num_workers: int = 0,
        shuffle: bool = True,
        max_ind_range: int | None = None,
        num_embeddings_per_feature: list[int] | None = None,
        min_frequency: int = 1,
        on_bad_line: Literal["error", "skip"] = "error",
        synthetic_rows: int = SyntheticConfig.rows,
        max_table_size: int = SyntheticConfig.max_table_size,
        teacher: TeacherName = SyntheticConfig.teacher,
        seed: int = 0,
        has_label: bool | None = None,
        progress: bool | None = None,
        sub_sample_rate: float = 0.0,
        preprocess_workers: int | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source: expected one of {SOURCES}, got {source!r}")
        if source != "terabyte" and (sub_sample_rate or preprocess_workers is not None):
            raise ValueError(
                "data.sub_sample_rate and data.preprocess_workers apply to source='terabyte' only, "
                f"got source={source!r}"
            )
        if not 0.0 <= sub_sample_rate < 1.0:
            raise ValueError(f"data.sub_sample_rate: expected [0, 1), got {sub_sample_rate}")
        if preprocess_workers is not None and preprocess_workers < 1:
            raise ValueError(
                f"data.preprocess_workers: expected >= 1 or None, got {preprocess_workers}"
            )
        if num_embeddings_per_feature is not None and not source.startswith("torchrec"):
            raise ValueError(
                "data.num_embeddings_per_feature: only TorchRec's files take it (their table "
                f"sizes are not stored), got source={source!r}"
            )
        if num_embeddings_per_feature is not None and (
            len(num_embeddings_per_feature) != 26 or min(num_embeddings_per_feature) < 1
        ):
            raise ValueError(
                "data.num_embeddings_per_feature: expected 26 positive table sizes, got "
                f"{num_embeddings_per_feature}"
            )
        if source != "synthetic" and not path:
            raise ValueError(f"data.path: source={source!r} needs the input file (--data.path=...)")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("data.batch_size and data.eval_batch_size must be positive")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        for name, value, least in (
            ("synthetic_rows", synthetic_rows, 1),
            ("max_table_size", max_table_size, 1),
            ("seed", seed, 0),
        ):
            if value < least:
                raise ValueError(f"data.{name}: expected an integer >= {least}, got {value}")
        check_directory("data.cache_dir", cache_dir)
        self.save_hyperparameters()
        self.source, self.path, self.cache_dir = source, path, cache_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.shuffle, self.seed = num_workers, shuffle, seed
        self.options = PreprocessOptions(
            max_ind_range=max_ind_range, min_frequency=min_frequency, on_bad_line=on_bad_line
        )
        self.synthetic = SyntheticConfig(
            rows=synthetic_rows, max_table_size=max_table_size, seed=seed, teacher=teacher
        )
        self.has_label, self.progress = has_label, progress
        self.sub_sample_rate, self.preprocess_workers = sub_sample_rate, preprocess_workers
        self.num_embeddings_per_feature = num_embeddings_per_feature
        self.num_dense = NUM_DENSE
        self._dir: Path | None = None
        self._meta: dict | None = None

    # -- the cache ---------------------------------------------------------------------------

    def _cache(self) -> tuple[Path, dict]:
        """(directory, meta) of this data's cache, built first if no complete one exists."""
        if self.source == "synthetic":
            return cached_synthetic(self.synthetic, self.cache_dir, self.options)
        if self.source == "kaggle":
            return cached_text(
                self.path,
                self.cache_dir,
                self.options,
                has_label=self.has_label,
                progress=self.progress,
            )
        if self.source == "terabyte":
            from .terabyte import cached_terabyte

            return cached_terabyte(
                self.path,
                self.cache_dir,
                self.options,
                sub_sample_rate=self.sub_sample_rate,
                seed=self.seed,
                workers=self.preprocess_workers,
                progress=self.progress,
            )
        if self.source == "dlrm_npz":
            from .npz import cached_npz

            return cached_npz(self.path, self.cache_dir, self.options)
        if self.source == "dlrm_terabyte":
            from .npz import cached_npz_days

            return cached_npz_days(self.path, self.cache_dir, self.options)
        from .formats import cached_index

        return cached_index(
            self.source, self.path, self.cache_dir, self.options, self.num_embeddings_per_feature
        )

    def prepare_data(self) -> None:
        """Build the cache unless a complete one exists (a Trainer calls this on local rank 0;
        other callers wait on the cache's lock file). Errors name the input file and line."""
        self._cache()

    def setup(self, stage: str | None = None) -> None:
        """Read the cache's metadata (building the cache first if `prepare_data` did not)."""
        if self._meta is None:
            self._dir, self._meta = self._cache()
            if self._meta.get("skipped_lines"):
                log.warning(
                    "%s: %d bad line(s) were skipped when the cache was built (see %s)",
                    self.path,
                    self._meta["skipped_lines"],
                    self._dir / "meta.json",
                )

    def _ready(self) -> tuple[Path, dict]:
        if self._meta is None:
            raise RuntimeError("CriteoDataModule: call prepare_data() and setup() first")
        return self._dir, self._meta

    @property
    def cache_path(self) -> Path:
        """The cache directory (after `setup`)."""
        return self._ready()[0]

    @property
    def meta(self) -> dict:
        """The cache's meta.json: table_sizes, splits, rows, has_label, ... (after `setup`)."""
        return self._ready()[1]

    @property
    def table_sizes(self) -> list[int]:
        """Rows of each of the 26 embedding tables (after `setup`)."""
        return list(self.meta["table_sizes"])

    def split_range(self, split: str) -> tuple[int, int]:
        """[start, stop) row numbers of `split` ("train", "val" or "test") in the cache."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        a, b = self.meta["splits"][split]
        return a, b

    # -- loaders -----------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def dataloader(
        self,
        split: str,
        *,
        shuffle: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> DataLoader:
        """Loader of one split; `rank`/`world_size` default to the attached trainer's."""
        if not self.meta.get("has_label"):
            raise ValueError(
                f"{self.path}: has no labels (a Kaggle test.txt?); "
                "training and evaluation need train.txt"
            )
        start, end = self.split_range(split)
        r, w = self._rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
        shuffle = (self.shuffle and split == "train") if shuffle is None else shuffle
        batch = self.batch_size if split == "train" else self.eval_batch_size
        sampler = ShardedBatchSampler(
            start,
            end,
            batch,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
            seed=self.seed,
            drop_last=split == "train",
        )
        if "parts" in self.meta:  # a processed format read in place (formats.py)
            from .formats import FileBatches

            dataset = FileBatches(self.meta)
        else:
            dataset = CriteoBatches(self.cache_path)
        return CriteoLoader(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """The train split's loader; in a run resumed mid-epoch, it starts at the first batch
        the checkpoint had not trained on (the fit loop's restored batch count), not again at
        the epoch's first."""
        loader = self.dataloader("train")
        trainer = self.trainer
        if trainer is not None and trainer.fit_loop.restarting:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if 0 < done < len(loader.sampler):
                loader.sampler.skip = done
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    # -- the synthetic teacher ---------------------------------------------------------------

    def teacher_metrics(self, split: str = "test") -> dict | None:
        """Bayes-optimal {"auc", "log_loss", "positive_rate"} of `split` (None unless synthetic)."""
        if self.source != "synthetic":
            return None
        a, b = self.split_range(split)
        stored = self.meta.get("teacher", {}).get("metrics", {}).get(split)
        if stored is not None:
            return dict(stored)
        prob = np.load(self.cache_path / "prob.npy", mmap_mode="r")[a:b]
        label = np.load(self.cache_path / "label.npy", mmap_mode="r")[a:b]
        return binary_metrics(prob, label)
