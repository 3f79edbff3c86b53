"""The shards a rank holds of a ``DistributedModelParallel`` network, read and written through
its state dict: every table a ``ShardedTensor`` whose local shards are views of the weights the
rank trains (FBGEMM's), each with its ``(row, column)`` offsets in the whole table."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


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
