"""The tables of a network as one process holds them, for the sweep: of a
``DistributedModelParallel``, through its state dict, every table a ``ShardedTensor`` whose local
shards are views of the weights the rank computes with (FBGEMM's), each with its ``(row, column)``
offsets in the whole table. :func:`held_tables` hands them to the pruning
(:mod:`lit_dlrm.sparsity.sharded`) with the all-reduces; :func:`whole_state` and
:func:`whole_network` gather them to rank 0 where the tables fit, for the size and timing
measurements; :func:`held_state` is each process's part of them, for sizes that need no
gathering. Needs no TorchRec."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from lit_dlrm.checkpoint import architecture
from lit_dlrm.model import DLRM
from lit_dlrm.sharded.keys import from_torchrec
from lit_dlrm.sparsity.sharded import Shard

_TABLE = re.compile(r"^emb_l\.(\d+)\.weight$")


@torch.no_grad()
def load_whole(network: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy whole tensors (a one-process state dict, TorchRec keys) into ``network`` (a DMP):
    each rank its own slice of every table, the dense tensors whole. Raises KeyError naming a
    key of the network that ``state`` lacks, ValueError for a shape that differs."""
    for key, held in network.state_dict().items():
        if key not in state:
            raise KeyError(f"state dict: no {key!r}, which the sharded network holds")
        whole = state[key]
        if tuple(whole.shape) != tuple(held.size()):  # a ShardedTensor's size is the whole one
            raise ValueError(
                f"{key}: shape {tuple(whole.shape)}, the network's is {tuple(held.size())}"
            )
        if isinstance(held, ShardedTensor):
            for shard in held.local_shards():
                (r, c), (n, d) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(whole[r : r + n, c : c + d])
        else:
            held.copy_(whole)


def sum_over_ranks(counts: Tensor) -> None:
    """``counts`` summed over the default process group, in place (the sharded cuts' reduce)."""
    dist.all_reduce(counts)


class HeldTables(NamedTuple):
    """The embedding tables as this process holds them.

    ``shards``: :class:`Shard` views of the weights the network computes with (writing into them
    changes the network); ``shapes``: every table's whole shape, in table order; ``reduce`` and
    ``reduce_max``: sum / max a tensor over the processes in place when the tables are sharded
    over them, None when this process holds every table whole."""

    shards: list[Shard]
    shapes: list[tuple[int, int]]
    reduce: Callable[[Tensor], None] | None
    reduce_max: Callable[[Tensor], None] | None

    @property
    def sharded(self) -> bool:
        return self.reduce is not None


def held_tables(network: nn.Module) -> HeldTables:
    """The tables of ``network``: a :class:`~lit_dlrm.model.DLRM`, a TorchRec-backend one, or a
    ``DistributedModelParallel`` of the latter (then each rank's shards, with the all-reduces)."""
    state = from_torchrec(network.state_dict(keep_vars=True))
    shards, shapes, sharded = [], [], False
    for k in range(len([key for key in state if _TABLE.match(key)])):
        held = state[f"emb_l.{k}.weight"]
        shapes.append(tuple(held.size()))
        if isinstance(held, ShardedTensor):
            sharded = True
            for shard in held.local_shards():
                shards.append(Shard(k, shard.tensor, tuple(shard.metadata.shard_offsets)))
        else:
            shards.append(Shard(k, held.detach(), (0, 0)))
    if not sharded:
        return HeldTables(shards, shapes, None, None)
    return HeldTables(shards, shapes, sum_over_ranks, max_over_ranks)


def whole_state(network: nn.Module) -> dict[str, Tensor] | None:
    """``network``'s weights as one process's state dict (the reference's keys and order: the
    tables first, then the MLPs). Sharded tables are gathered to rank 0: every rank calls it,
    and it returns None off rank 0."""
    state = from_torchrec(network.state_dict())
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    out = {}
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            whole = torch.empty(tuple(value.size()), dtype=value.dtype) if rank0 else None
            value.gather(dst=0, out=whole)
            value = whole
        out[key] = value
    if not rank0:
        return None
    with torch.device("meta"):  # the order of DLRM's own state dict (DMP's differs)
        order = DLRM(**architecture(out)).state_dict()
    return {key: out[key] for key in order}


def held_state(network: nn.Module) -> dict[str, Tensor]:
    """What this process of a sharded ``network`` writes of it: each table shard it holds, keyed
    ``shard_<row>_<column>.emb_l.<k>.weight`` by its offsets, and on rank 0 the replicated
    tensors (the MLPs). The parts of all the processes together hold the network once."""
    out = {}
    for key, value in from_torchrec(network.state_dict()).items():
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                r, c = shard.metadata.shard_offsets
                out[f"shard_{r}_{c}.{key}"] = shard.tensor
        elif dist.get_rank() == 0:
            out[key] = value
    return out


def whole_network(network: nn.Module) -> DLRM | None:
    """``network`` as a one-process :class:`~lit_dlrm.model.DLRM` (itself when it is one; else a
    DLRM holding :func:`whole_state`: every rank calls it, None off rank 0)."""
    if isinstance(network, DLRM) and "emb_l" in network._modules:
        return network
    state = whole_state(network)
    if state is None:
        return None
    with torch.device("meta"):
        whole = DLRM(**architecture(state))
    whole.load_state_dict(state, assign=True)
    whole.activation_sparsity = unwrapped(network).activation_sparsity
    return whole.eval()


def unwrapped(network: nn.Module) -> DLRM:
    """The DLRM inside a ``DistributedModelParallel`` (its ``module``), else ``network``."""
    return getattr(network, "module", network)


def max_over_ranks(values: Tensor) -> None:
    """``values`` maximised over the default process group, in place."""
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
