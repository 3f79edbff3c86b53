"""DLRM checkpoints: read safely, written atomically, the best file consistent with ``last.ckpt``.

Reading (:func:`load_state_dict`, :func:`architecture`, :func:`check_resumable`) takes three
layouts, all through ``torch.load(..., weights_only=True)``: a lit_dlrm Lightning checkpoint
(``{"state_dict": {"model.emb_l.0.weight": ...}, ...}``; ``--model.backend=torchrec``'s
``model.ebc.embedding_bags.t0.weight`` read as ``emb_l.0.weight``), a facebookresearch/dlrm
``--save-model`` file (its numpy scalars let in by :data:`NUMPY_ALLOW_LIST`, nothing else) and a
bare state_dict; and the sweep's ``.lds`` files (recognised by their magic bytes, read without
pickle, quantised tables dequantised).
Anything else raises :class:`CheckpointError` naming the file (and the refused global, if any).

Writing: :class:`AtomicCheckpointIO` leaves a whole checkpoint or none under every name, and
defers removals to after the next save; :class:`BestCheckpoint` cleans up after a killed run.
"""

from __future__ import annotations

import glob
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from fsspec.utils import get_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from torch import Tensor

from lit_dlrm.model import interaction_size
from lit_dlrm.paths import atomic_write
from lit_dlrm.sharded.checkpoint import META, is_sharded
from lit_dlrm.sharded.keys import from_torchrec
from lit_dlrm.sparsity.compression import is_compressed_file, load_compressed
from lit_dlrm.sparsity.quantize import load_quantized_state_dict

# numpy's scalar reconstructor: numpy._core.multiarray.scalar (numpy 2; numpy 1 wrote numpy.core)
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
NUMPY_ALLOW_LIST = [
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    np.dtype,
    # the dtype of each scalar: the float and integer types dlrm's counters and losses use
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not hold a DLRM."""


def _load_lds(path: Path) -> dict[str, Tensor]:
    """A sweep's ``.lds`` file (:mod:`lit_dlrm.sparsity.compression`): its state_dict, the int8 /
    int4 tables of a quantised point dequantised (what the sweep scored)."""
    try:
        return load_quantized_state_dict(load_compressed(path))
    except Exception as err:  # truncated or damaged: zstandard, json and numpy raise their own
        raise CheckpointError(
            f"{path}: not a readable .lds file ({type(err).__name__}: {err})"
        ) from err


def _load(path: Path, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` with the numpy allow-list, or :func:`_load_lds`
    for a file that starts like an ``.lds`` file; errors name the file."""
    if path.is_dir():
        hint = (
            " (a sharded checkpoint: make it one file with "
            "`python -m lit_dlrm.sharded.checkpoint DIR FILE`)"
            if is_sharded(path)
            else ""
        )
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if is_compressed_file(path):
        return _load_lds(path)
    try:
        with torch.serialization.safe_globals(NUMPY_ALLOW_LIST):
            # mmap needs torch's zip format; anything else is read whole (and refused if garbage)
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as err:
        # torch's message is long; keep the line that names what was refused.
        reason = next(
            (ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "but got" in ln), None
        )
        if reason is None:  # not a pickle of objects at all: garbage
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint (corrupt pickle data)"
            ) from err
        raise CheckpointError(
            f"{path}: refused, it needs more than tensors and numpy scalars to load "
            f"(weights_only=True): {reason}"
        ) from err
    except Exception as err:  # a damaged or foreign file makes torch.load raise almost anything
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})"
        ) from err


def _dlrm_state(obj, path: Path) -> dict[str, Tensor]:
    """The DLRM state_dict (reference key names) inside a loaded checkpoint object."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state_dict (got {type(obj).__name__})")
    if any(key.startswith("model.") for key in state):  # lit_dlrm's LightningModule prefix
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    state = from_torchrec(state)  # a --model.backend=torchrec checkpoint's table keys
    if not any(key.startswith("emb_l.") for key in state):
        raise CheckpointError(
            f"{path}: not a DLRM state_dict (no 'emb_l.*' keys; found e.g. {sorted(state)[:3]})"
        )
    return state


def load_state_dict(path: str | Path, mmap: bool = False) -> dict[str, Tensor]:
    """The DLRM state_dict (reference key names, CPU tensors) stored in ``path``; with ``mmap``,
    a torch zip file's tensors are mapped from it copy-on-write (read on demand, never written
    back) instead of read into memory."""
    path = Path(path)
    return _dlrm_state(_load(path, mmap=mmap), path)


def check_resumable(path: str | Path, model_options: dict) -> None:
    """Refuse, naming ``--ckpt_path``, a file ``trainer.fit`` could not resume from: missing,
    unreadable, unsafe, not a Lightning checkpoint of a DLRM, or holding another architecture
    than ``model_options`` (``--model.*``) describe. The tensors are memory-mapped, not read."""
    path = Path(path)
    try:
        obj = _load(path, mmap=True)
        if not (isinstance(obj, dict) and "pytorch-lightning_version" in obj):
            raise CheckpointError(
                f"{path}: not a Lightning checkpoint to resume "
                "(a last.ckpt or best-*.ckpt of scripts/train.py)"
            )
        arch = architecture(_dlrm_state(obj, path))
    except CheckpointError as err:
        raise CheckpointError(f"--ckpt_path: {err}") from err
    for key in ("num_dense", "embedding_dim", "bottom_mlp", "top_mlp", "interaction"):
        wanted = model_options.get(key, arch[key])
        if (list(wanted) if isinstance(wanted, (list, tuple)) else wanted) != arch[key]:
            raise CheckpointError(
                f"--ckpt_path: {path} holds a model with {key}={arch[key]}, "
                f"but --model.{key}={wanted}"
            )


def datamodule_options(path: str | Path) -> dict | None:
    """The ``CriteoDataModule`` arguments a Lightning checkpoint was trained with (its
    ``datamodule_hyper_parameters``, Lightning's own ``_*`` keys left out); None for a file that
    holds none (a bare state_dict, a facebookresearch/dlrm file). Raises CheckpointError as
    :func:`load_state_dict`. The tensors are memory-mapped, not read; of a sharded checkpoint
    directory, its ``meta.pt`` is read."""
    path = Path(path)
    obj = _load(path / META if is_sharded(path) else path, mmap=True)
    options = obj.get("datamodule_hyper_parameters") if isinstance(obj, dict) else None
    if not isinstance(options, dict):
        return None
    return {k: v for k, v in options.items() if not str(k).startswith("_")}


def _linear_widths(state: dict[str, Tensor], prefix: str) -> list[int]:
    """[in, out_1, out_2, ...] of the Linear layers stored under ``prefix.{0,2,4,...}``."""
    indices = sorted(
        int(k.split(".")[1]) for k in state if k.startswith(prefix) and k.endswith(".weight")
    )
    weights = [state[f"{prefix}.{i}.weight"] for i in indices]
    return [weights[0].shape[1], *(w.shape[0] for w in weights)] if weights else []


def architecture(state: dict[str, Tensor]) -> dict:
    """The :class:`DLRM` constructor arguments that fit the tensors of ``state``."""
    n_tables = len({k.split(".")[1] for k in state if k.startswith("emb_l.")})
    tables = [state[f"emb_l.{k}.weight"] for k in range(n_tables)]
    bottom, top = _linear_widths(state, "bot_l"), _linear_widths(state, "top_l")
    if not bottom or not top:
        raise CheckpointError("state_dict lacks the bottom or top MLP ('bot_l.*', 'top_l.*')")
    dim = tables[0].shape[1]
    interaction = next(
        (kind for kind in ("dot", "cat") if interaction_size(n_tables + 1, dim, kind) == top[0]),
        None,
    )
    if interaction is None:
        raise CheckpointError(
            f"top MLP input width {top[0]} fits neither a dot nor a cat interaction"
        )
    return dict(
        table_sizes=[t.shape[0] for t in tables],
        num_dense=bottom[0],
        embedding_dim=dim,
        bottom_mlp=bottom[1:-1],
        top_mlp=top[1:-1],
        interaction=interaction,
    )


def latest_checkpoint(root: str | Path = "runs/train") -> Path:
    """The best checkpoint (``best-*.ckpt``) written most recently by ``scripts/train.py``."""
    found = sorted(
        Path(root).glob("version_*/checkpoints/best-*.ckpt"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise CheckpointError(
            f"{root}: no best-*.ckpt from scripts/train.py; train first, or pass --ckpt_path"
        )
    return found[-1]


def _is_local(path) -> bool:
    return get_protocol(str(path)) == "file"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but a local save is ``torch.save`` into a hidden temp file
    beside the target, renamed over it (:func:`lit_dlrm.paths.atomic_write`): the name holds the
    old checkpoint or the new one, whole, whatever ``$TMPDIR`` is. The first save into a directory
    removes temp files a killed save left there. A removal waits until the next save (or
    ``teardown``) completes, so a superseded best file outlives the ``last.ckpt`` that names it.
    Remote paths (``s3://`` ...) are saved by Lightning's own code."""

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()  # directories already cleared of a killed save's temp files
        self._removals: list = []  # paths to remove once the next save is complete

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            path = Path(path)
            if path.parent not in self._swept:  # one writer per checkpoint directory (rank 0)
                for stale in path.parent.glob(".*.ckpt.*.tmp"):
                    stale.unlink(missing_ok=True)
                self._swept.add(path.parent)
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        self.teardown()

    def remove_checkpoint(self, path) -> None:
        self._removals.append(path)

    def teardown(self) -> None:
        """Carry out the removals deferred so far (Lightning calls this when a run ends)."""
        while self._removals:
            super().remove_checkpoint(self._removals.pop(0))


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, when a fit resumes, deletes the files of its own pattern that the
    restored state does not name: those a killed run wrote after that state, its training being
    redone. With :class:`AtomicCheckpointIO` the files on disk always include those the newest
    ``last.ckpt`` names (the superseded best file goes after the next save)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prefix = (self.filename or "").split("{")[0]  # "best-" of "best-epoch{epoch:02d}-..."
        restored = trainer.ckpt_path and self.best_k_models  # and into this directory
        if not (restored and prefix and trainer.is_global_zero and _is_local(self.dirpath)):
            return
        known = {
            Path(p).resolve()
            for p in (*self.best_k_models, self.last_model_path, trainer.ckpt_path)
            if p
        }
        for path in Path(self.dirpath).glob(glob.escape(prefix) + "*" + self.FILE_EXTENSION):
            if path.resolve() not in known:  # a file, or a sharded checkpoint's directory
                shutil.rmtree(path) if path.is_dir() else path.unlink()
