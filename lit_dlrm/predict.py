"""Scoring a Criteo-format file of rows with a trained model: click probabilities into a CSV.

:func:`score_file` parses the rows with the data package's parser (:func:`lit_dlrm.data.criteo.
iter_blocks`: Kaggle TSV/CSV, gzip, labelled or not), maps each raw categorical value to the id the
training data gave it (the cache's ``vocab.npz``), preprocesses them as the training data were
(:func:`lit_dlrm.data.preprocess.build_arrays` into a temporary directory, batches by
:class:`lit_dlrm.data.CriteoBatches`) and runs ``trainer.predict``
(:meth:`DLRMModule.predict_step`).

A value the training data never had has no row in its table: it gets a zero embedding (as an
empty bag would), and the number of such values is returned. The CSV (written atomically) has one
line per row in file order: ``row`` (0-based), ``probability``, and ``label`` when the file has
labels. Errors: ValueError naming the option (``--rows``, ``--ckpt_path``) or the file and line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_dlrm.data import CriteoBatches, CriteoDataModule, ShardedBatchSampler
from lit_dlrm.data.criteo import ParsedBlock, iter_blocks
from lit_dlrm.data.preprocess import VOCABULARY, PreprocessOptions, build_arrays
from lit_dlrm.module import DLRMModule
from lit_dlrm.paths import atomic_write


@dataclass(frozen=True)
class Vocabulary:
    """Raw categorical value -> id, per feature, as the training data's preprocessing assigned."""

    keys: list[np.ndarray]  # per feature: sorted raw values (uint32, after max_ind_range)
    ids: list[np.ndarray]  # per feature: their ids (int32)
    max_ind_range: int | None

    @classmethod
    def of(cls, data: CriteoDataModule) -> Vocabulary:
        """The vocabulary of ``data``'s cache (prepared and set up here if not yet)."""
        if data.source not in ("synthetic", "kaggle"):
            raise ValueError(
                f"--ckpt_path: the model was trained on processed files (source={data.source!r}), "
                "which keep ids but not the raw values they stand for, so raw rows cannot be "
                "mapped to its tables"
            )
        data.prepare_data()
        data.setup()
        path = data.cache_path / VOCABULARY
        if not path.is_file():
            raise ValueError(
                f"{path}: missing; this cache was built before lit_dlrm kept vocabularies: "
                f"delete {data.cache_path} and run again to rebuild it"
            )
        with np.load(path) as z:
            n = len(data.table_sizes)
            keys, ids = [z[f"keys{j}"] for j in range(n)], [z[f"ids{j}"] for j in range(n)]
        return cls(keys, ids, data.options.max_ind_range)

    def encode(self, raw: np.ndarray, unseen: list[int]) -> tuple[np.ndarray, int]:
        """raw uint32 (n, T) values -> (ids int64 (n, T), count of unseen values); an unseen
        value of feature j gets id ``unseen[j]``."""
        if self.max_ind_range is not None:
            raw = raw % np.uint32(self.max_ind_range)
        out = np.empty(raw.shape, dtype=np.int64)
        missing = 0
        for j, (keys, ids) in enumerate(zip(self.keys, self.ids)):
            pos = np.searchsorted(keys, raw[:, j]).clip(max=max(len(keys) - 1, 0))
            found = keys[pos] == raw[:, j] if len(keys) else np.zeros(len(raw), bool)
            out[:, j] = np.where(found, ids[pos] if len(keys) else 0, unseen[j])
            missing += int((~found).sum())
        return out, missing


def with_zero_rows(module: DLRMModule) -> DLRMModule:
    """``module``, changed in place: one all-zero row appended to every (dense) table, row ``n`` of
    an ``n``-row table, where unseen values are looked up."""
    for k, table in enumerate(module.model.emb_l):
        weight = table.weight.detach()
        zero = weight.new_zeros(1, weight.shape[1])
        module.model.emb_l[k] = nn.EmbeddingBag.from_pretrained(
            torch.cat([weight, zero]), mode="sum", freeze=True
        )
    return module


def score_file(
    module: DLRMModule,
    data: CriteoDataModule,
    rows: str | Path,
    out: str | Path,
    batch_size: int = 16384,
    trainer: L.Trainer | None = None,
) -> tuple[Path, int, int]:
    """Score every row of the Criteo-format file ``rows`` with ``module`` (trained on ``data``)
    into the CSV ``out`` -> (out, rows scored, unseen categorical values)."""
    rows, out = Path(rows), Path(out)
    if not rows.is_file():
        raise ValueError(f"--rows: no such file: {rows}")
    sizes = [t.num_embeddings for t in module.model.emb_l]
    vocab = Vocabulary.of(data)
    needed = [int(ids.max()) + 1 if len(ids) else 0 for ids in vocab.ids]
    if len(needed) != len(sizes) or any(a > b for a, b in zip(needed, sizes)):
        raise ValueError(
            f"--ckpt_path: the model's tables {sizes} do not hold the ids of the data "
            f"{needed}; pass the --data.* options it was trained with"
        )
    unseen = {"values": 0}
    labels: list[np.ndarray] = []

    def blocks():
        for block in iter_blocks(rows):
            ids, missing = vocab.encode(block.cat, sizes)
            unseen["values"] += missing
            label = block.label
            if label is not None:
                labels.append(label)
            # the batches read a label array; an unlabelled file gets zeros, never written out
            yield ParsedBlock(
                label=np.zeros(len(block), np.uint8) if label is None else label,
                dense=block.dense,
                cat=ids,
                first_line=block.first_line,
            )

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        meta = build_arrays(
            blocks(), Path(tmp), PreprocessOptions(), given_ids=[n + 1 for n in sizes]
        )
        sampler = ShardedBatchSampler(0, meta["rows"], batch_size, shuffle=False)
        loader = DataLoader(CriteoBatches(tmp), batch_size=None, sampler=sampler)
        trainer = trainer or L.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False
        )
        probs = torch.cat(trainer.predict(with_zero_rows(module), dataloaders=loader)).numpy()
    table = pd.DataFrame({"row": np.arange(len(probs)), "probability": probs})
    if labels:
        table["label"] = np.concatenate(labels)
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.9g"))
    return out, len(probs), unseen["values"]
