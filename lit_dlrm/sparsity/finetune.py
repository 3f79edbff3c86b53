"""Recovery by fine-tuning: train a pruned model for a few steps with its masks held fixed.

How much of the quality lost at high sparsity comes back if the surviving weights (and the
MLPs) are trained a little more? :func:`finetune` runs ``steps`` optimiser steps of the
module's own loss and optimiser (``DLRMModule.configure_optimizers``, a fresh optimiser state)
on training batches, and after every step writes 0.0 again wherever a table was zero when it
started: the pruned weights stay exactly zero throughout (the optimiser's update to them is
discarded, so they never leak into the next step's forward).

The mask is "was zero after pruning": a surviving weight that is exactly 0.0 is held too (a
trained float32 weight is exactly zero with negligible probability, and holding it changes
nothing the sweep reports). Memory: one bool per table weight (a quarter of the tables' bytes).

A plain loop rather than a nested ``trainer.fit``: it runs inside the sweep's ``trainer.test``
(:class:`callbacks.Sparsify`), on the model's device. Under DDP every process runs the same
steps on the same batches, so the replicas stay equal without exchanging gradients (the
fine-tuning is not faster for it; a few hundred steps do not need to be).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
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
        optimizer = module.configure_optimizers()
        was_training = model.training
        model.train()
        losses = []
        device = tables[0].device
        for dense, sparse, labels in itertools.islice(repeat(batches), steps):
            dense, sparse, labels = dense.to(device), sparse.to(device), labels.to(device)
            loss = F.binary_cross_entropy_with_logits(model(dense, sparse), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for table, zero in zip(tables, zeros):
                    table.masked_fill_(zero, 0.0)
            losses.append(loss.item())
        model.train(was_training)
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail) if tail else float("nan")
