"""Reading DLRM weights from disk without ever unpickling arbitrary objects.

Three layouts are accepted, all read with ``torch.load(..., weights_only=True)``:

- a lit_dlrm (Lightning) checkpoint: ``{"state_dict": {"model.emb_l.0.weight": ...}, ...}``;
- a facebookresearch/dlrm ``--save-model`` checkpoint: ``{"state_dict": {...}, "nepochs": ...,
  "opt_state_dict": ..., "test_acc": numpy.float64(...), ...}``;
- a bare state_dict ``{"emb_l.0.weight": ..., "bot_l.0.weight": ..., ...}``.

The dlrm checkpoint holds numpy scalars, which plain ``weights_only=True`` refuses. They are let in
through a narrow allow-list (numpy's scalar reconstructor and ``numpy.dtype``, nothing else); any
other global in the pickle is refused with an error that names the file and the global.

:func:`build_model` rebuilds the network from the tensor shapes alone, so any of the three loads
without knowing the architecture in advance.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_dlrm.model import DLRM, interaction_size

# numpy 2 pickles scalars through numpy._core.multiarray.scalar; numpy 1 wrote numpy.core.
_NUMPY_SCALAR = np._core.multiarray.scalar  # type: ignore[attr-defined]
NUMPY_ALLOW_LIST = [
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    np.dtype,
    # the dtype of each scalar: the float and integer types dlrm's counters and losses use
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not hold a DLRM."""


def _load(path: Path, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` with the numpy allow-list; errors name the file."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
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
    if not any(key.startswith("emb_l.") for key in state):
        raise CheckpointError(
            f"{path}: not a DLRM state_dict (no 'emb_l.*' keys; found e.g. {sorted(state)[:3]})"
        )
    return state


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The DLRM state_dict (reference key names, CPU tensors) stored in ``path``."""
    path = Path(path)
    return _dlrm_state(_load(path), path)


def check_resumable(path: str | Path, model_options: dict) -> None:
    """Refuse, naming ``--ckpt_path``, a file ``trainer.fit`` could not resume from: missing,
    unreadable, unsafe, not a Lightning checkpoint of a DLRM, or holding another architecture
    than ``model_options`` (``--model.*``) describe. The tensors are memory-mapped, not read."""
    path = Path(path)
    try:
        obj = _load(path, mmap=True)
        if not (isinstance(obj, dict) and "pytorch-lightning_version" in obj):
            raise CheckpointError(
                f"{path}: not a Lightning checkpoint to resume (a last.ckpt or best-*.ckpt of scripts/train.py)"
            )
        arch = architecture(_dlrm_state(obj, path))
    except CheckpointError as err:
        raise CheckpointError(f"--ckpt_path: {err}") from err
    for key in ("num_dense", "embedding_dim", "bottom_mlp", "top_mlp", "interaction"):
        wanted = model_options.get(key, arch[key])
        if (list(wanted) if isinstance(wanted, (list, tuple)) else wanted) != arch[key]:
            raise CheckpointError(
                f"--ckpt_path: {path} holds a model with {key}={arch[key]}, but --model.{key}={wanted}"
            )


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


def build_model(path: str | Path) -> DLRM:
    """A :class:`DLRM` holding the weights of the checkpoint at ``path``, whatever its layout."""
    state = load_state_dict(path)
    try:
        model = DLRM(**architecture(state))
        model.load_state_dict(state)
    except (CheckpointError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: not a DLRM this code can rebuild: {err}") from err
    return model


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
