"""Average the embedding tables' sparse gradients over DDP ranks with all-gathers, not DDP.

The tables are left out of DDP (:func:`ignore_in_ddp`, before DDP wraps the module) and, once per
optimizer step, :func:`average_sparse_grads` gathers every rank's (row ids, gradient rows) of every
table and keeps them all, divided by the world size: DDP's average, on any backend, never dense.

    table t on rank r:  ids (n_rt,) int64,  rows (n_rt, d_t)   (one entry per looked-up id)

Why not DDP's own sparse all-reduce: docs/design.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def ignore_in_ddp(module: nn.Module, names: list[str]) -> None:
    """Keep the parameters ``names`` (of ``module``, which DDP is about to wrap) out of DDP.

    torch has no public API for this: the private one is pinned by pyproject.toml's torch bound
    and by tests/test_ddp.py::test_private_ddp_ignore_api_is_still_there."""
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


def _gather(tensor: Tensor, world: int) -> list[Tensor]:
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor.contiguous())
    return out


def average_sparse_grads(params: list[nn.Parameter]) -> None:
    """Replace each parameter's sparse ``.grad`` (None: no row looked up) by the mean over ranks.
    Every rank must call it, with its tables in the same order (it runs three all-gathers)."""
    world = dist.get_world_size()
    device = params[0].device
    grads = [p.grad.coalesce() if p.grad is not None else None for p in params]
    counts = [g.values().shape[0] if g is not None else 0 for g in grads]
    counts = torch.tensor(counts, device=device)  # (T,)
    counts = torch.stack(_gather(counts, world)).tolist()  # (world, T)
    widths = [max(c[t] for c in counts) for t in range(len(params))]  # every rank pads to these
    ids, rows = [], []
    for param, grad, width in zip(params, grads, widths):
        d = param.shape[1:].numel()
        i = (
            grad.indices()[0]
            if grad is not None
            else torch.empty(0, dtype=torch.long, device=device)
        )
        v = (
            grad.values().reshape(-1)
            if grad is not None
            else torch.empty(0, dtype=param.dtype, device=device)
        )
        ids.append(torch.nn.functional.pad(i, (0, width - i.numel())))
        rows.append(torch.nn.functional.pad(v, (0, (width - i.numel()) * d)))
    all_ids, all_rows = _gather(torch.cat(ids), world), _gather(torch.cat(rows), world)
    start_i = start_v = 0
    for t, (param, width) in enumerate(zip(params, widths)):
        d = param.shape[1:].numel()
        kept_ids = [all_ids[r][start_i : start_i + counts[r][t]] for r in range(world)]
        kept_rows = [all_rows[r][start_v : start_v + counts[r][t] * d] for r in range(world)]
        start_i, start_v = start_i + width, start_v + width * d
        if sum(c[t] for c in counts) == 0:
            param.grad = None
            continue
        values = torch.cat(kept_rows).reshape(-1, *param.shape[1:]) / world  # (sum n_rt, d)
        param.grad = torch.sparse_coo_tensor(torch.cat(kept_ids)[None], values, param.shape)
