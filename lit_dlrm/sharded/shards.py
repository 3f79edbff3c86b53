"""The shards a rank holds of a ``DistributedModelParallel`` network, read and written through
its state dict: every table a ``ShardedTensor`` whose local shards are views of the weights the
rank trains (FBGEMM's), each with its ``(row, column)`` offsets in the whole table.
:func:`table_shards` hands them to the sweep's pruning (:mod:`lit_dlrm.sparsity.sharded`), with
:func:`sum_over_ranks` as its ``reduce``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from lit_dlrm.sharded.keys import EBC, table_name
from lit_dlrm.sparsity.sharded import Shard


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


def table_shards(network: nn.Module, tables: int) -> tuple[list[Shard], list[tuple[int, int]]]:
    """This rank's shards of tables ``0..tables-1`` of ``network`` (a DMP of a
    :class:`~lit_dlrm.sharded.model.TorchRecDLRM`), as views of the weights it trains (writing
    into them changes the network), and every table's whole shape, in table order."""
    state = network.state_dict()
    shards, shapes = [], []
    for k in range(tables):
        held = state[f"{EBC}.embedding_bags.{table_name(k)}.weight"]
        shapes.append(tuple(held.size()))
        for shard in held.local_shards():
            shards.append(Shard(k, shard.tensor, tuple(shard.metadata.shard_offsets)))
    return shards, shapes


def sum_over_ranks(counts: Tensor) -> None:
    """``counts`` summed over the default process group, in place (the sharded cuts' reduce)."""
    dist.all_reduce(counts)
