"""Fine-tuning a pruned model for a few steps with its masks held fixed.

:func:`finetune` trains with the module's own loss and optimiser (a fresh state) and writes 0.0
again after every step wherever a table was zero when it started: pruned weights stay exactly
zero. Memory: one bool per table weight. Reasoning: ``docs/design.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


def repeat(batches: Iterable) -> Iterator:
    """The batches of ``batches`` (a DataLoader: iterable again and again), over and over, without
    holding them in memory as ``itertools.cycle`` would."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("fine-tuning: the training split yields no batches")


def touched_rows(grad: Tensor | None) -> Tensor | None:
    """The rows a table's sparse gradient ``grad`` updates (sorted, unique); None for a dense
    gradient (every row may move); empty for no gradient."""
    if grad is None:
        return torch.empty(0, dtype=torch.long)
    if not grad.is_sparse:
        return None
    return grad.coalesce().indices()[0]


def finetune(module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], steps: int) -> float:
    """Train ``module`` (a ``DLRMModule``) in place for ``steps`` batches of ``batches`` (cycled),
    its embedding tables' zeros held fixed. Returns the mean training loss of the last steps."""
    model = module.model
    with torch.inference_mode(False), torch.enable_grad():
        tables = [table.weight for table in model.emb_l]
        for table in tables:  # the sweep's pruned buffers may be inference tensors: train copies
            if table.data.is_inference():
                table.data = table.data.clone()
        zeros = [table.data == 0 for table in tables]
        optimizer = module.make_optimizer()  # no schedule: a few steps at the trained lr
        was_training = model.training
        model.train()
        losses = []
        device = tables[0].device
        for batch in itertools.islice(repeat(batches), steps):
            _, loss = module.batch_loss([t.to(device) for t in batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            touched = [touched_rows(table.grad) for table in tables]
            with torch.sparse.check_sparse_tensor_invariants(enable=False):  # as DLRMModule
                optimizer.step()
            with torch.no_grad():
                for table, zero, rows in zip(tables, zeros, touched):
                    if rows is None:
                        table.masked_fill_(zero, 0.0)
                    elif len(rows):
                        table[rows] = table[rows].masked_fill_(zero[rows], 0.0)
            losses.append(loss.item())
        model.train(was_training)
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail) if tail else float("nan")
