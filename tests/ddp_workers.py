"""The ranks of test_ddp.py's 2-process checks, in a module light enough for spawned processes
to import fast."""

import torch
import torch.distributed as dist
from torch import nn

from lit_dlrm.metrics import ClickMetrics
from lit_dlrm.sparse_sync import average_sparse_grads


def update_and_compute(rank: int, world: int, init_file: str, parts: list, out: str) -> None:
    """Join a gloo group, feed this rank's batches to ClickMetrics, save what compute() returns."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metrics = ClickMetrics(
        flush_every=64
    )  # flushes mid-way on rank 0, leaves a partial buffer on both
    for logits, labels in parts[rank]:
        metrics.update(logits, labels)
    torch.save(metrics.compute(), out.format(rank=rank))
    dist.destroy_process_group()


def average_lookups(rank: int, world: int, init_file: str, lookups: list, out: str) -> None:
    """Join a gloo group, look up this rank's ids in 3 sparse tables, average and save the
    gradients."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    tables = [nn.EmbeddingBag(n, 4, mode="sum", sparse=True) for n in (7, 5, 3)]
    for table, ids in zip(tables, lookups[rank]):
        if len(ids):
            (table(torch.tensor(ids)[:, None]) * torch.arange(1.0, 5.0)).sum().backward()
    average_sparse_grads([table.weight for table in tables])
    grads = [t.weight.grad.to_dense() if t.weight.grad is not None else None for t in tables]
    torch.save(grads, out.format(rank=rank))
    dist.destroy_process_group()
