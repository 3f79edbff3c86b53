"""One rank of test_ddp.py's ClickMetrics check, in a module light enough for a spawned process to import fast."""

import torch
import torch.distributed as dist

from lit_dlrm.metrics import ClickMetrics


def update_and_compute(rank: int, world: int, init_file: str, parts: list, out: str) -> None:
    """Join a gloo group, feed this rank's batches to a ClickMetrics, save what compute() returns."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metrics = ClickMetrics(flush_every=64)  # flushes mid-way on rank 0, leaves a partial buffer on both
    for logits, labels in parts[rank]:
        metrics.update(logits, labels)
    torch.save(metrics.compute(), out.format(rank=rank))
    dist.destroy_process_group()
