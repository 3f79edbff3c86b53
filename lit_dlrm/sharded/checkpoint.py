"""Sharded checkpoints: a directory per checkpoint, each rank writing the shards it holds.

    <name>.ckpt/  .metadata, __<rank>_0.distcp   torch.distributed.checkpoint (DCP): the
                                                 "state_dict" and "optimizer_states" of Lightning's
                                                 checkpoint, ShardedTensor tables included
                  meta.pt                        the rest of it (loops, callbacks, hparams, ...),
                                                 written by rank 0 with torch.save

A save writes ``.<name>.ckpt.tmp/`` and rank 0 renames it over the name once every rank is done,
so the name never holds a partial checkpoint (between the two renames of a replacement it holds
none). :func:`to_one_file` turns a sharded checkpoint into one ordinary Lightning checkpoint file
(every table whole), which every reader of :mod:`lit_dlrm.checkpoint` takes, the sweep included.
Needs no TorchRec; :func:`save` and :func:`load_into` need the process group.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from lit_dlrm.paths import atomic_write

SHARDED = ("state_dict", "optimizer_states")  # the entries DCP writes, shard by shard
META = "meta.pt"  # the rest of the checkpoint, rank 0's
STRATEGY = "lit_dlrm.sharded.strategy.TorchRecStrategy"  # --trainer.strategy that writes them


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (it holds DCP's ``.metadata``)."""
    return (Path(path) / ".metadata").is_file()


def check_resumable(path: str | Path, model_options: dict) -> None:
    """Refuse, naming ``--ckpt_path``, a sharded checkpoint whose model options (its
    ``hyper_parameters``) differ from ``model_options`` (``--model.*``) in the architecture."""
    saved = hyper_parameters(path)
    for key in (
        "table_sizes",
        "num_dense",
        "embedding_dim",
        "bottom_mlp",
        "top_mlp",
        "interaction",
    ):
        wanted, held = model_options.get(key), saved.get(key)
        if wanted is not None and held is not None and list_or(wanted) != list_or(held):
            raise ValueError(
                f"--ckpt_path: {path} holds a model with {key}={held}, but --model.{key}={wanted}"
            )


def hyper_parameters(path: str | Path) -> dict[str, Any]:
    """The LightningModule's hyperparameters saved in the sharded checkpoint ``path`` (Lightning's
    own ``_*`` keys left out)."""
    meta = torch.load(Path(path) / META, weights_only=True, mmap=True)
    saved = meta.get("hyper_parameters", {})
    return {k: v for k, v in saved.items() if not str(k).startswith("_")}


def list_or(value):
    """``value`` as a list if it is a sequence (YAML gives lists, checkpoints tuples or lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` (Lightning's dict) as the sharded directory ``path``. Every rank calls
    it; it returns once the directory is in place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save's
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({k: checkpoint[k] for k in SHARDED if k in checkpoint}, checkpoint_id=tmp)
    if dist.get_rank() == 0:
        torch.save({k: v for k, v in checkpoint.items() if k not in SHARDED}, tmp / META)
        old = path.parent / f".{path.name}.old"
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_into(path: str | Path, template: dict[str, Any]) -> dict[str, Any]:
    """``template`` (entries of :data:`SHARDED`, shaped and sharded as the running model and
    optimisers hold them) filled in place from the sharded checkpoint ``path``; every rank calls
    it and reads its own shards."""
    dcp.load(template, checkpoint_id=Path(path))
    return template


def to_one_file(path: str | Path, out: str | Path) -> Path:
    """The sharded checkpoint ``path`` as one Lightning checkpoint file ``out`` (written
    atomically; every table whole, so the file needs them all in memory). No process group."""
    path, out = Path(path), Path(out)
    if not is_sharded(path):
        raise ValueError(
            f"{path}: not a sharded checkpoint (no .metadata; expected a directory "
            f"written by {STRATEGY})"
        )

    def write(tmp: Path) -> None:
        dcp_to_torch_save(path, tmp)
        tensors = torch.load(tmp, weights_only=True)
        meta = torch.load(path / META, weights_only=True)
        torch.save({**meta, **tensors}, tmp)

    atomic_write(out, write)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_dlrm.sharded.checkpoint SHARDED_DIR OUT_FILE``: :func:`to_one_file`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sharded", help="a sharded checkpoint directory (<name>.ckpt/)")
    parser.add_argument("out", help="the one-file checkpoint to write")
    args = parser.parse_args(argv)
    try:
        print(to_one_file(args.sharded, args.out))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
