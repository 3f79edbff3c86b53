"""The optimiser of a sharded network: TorchRec's fused table optimiser plus the usual one over
the MLPs, joined so that Lightning, checkpoints and LR schedules see one optimiser.

The tables' optimiser runs inside the backward pass (FBGEMM), attached to the tables with
``apply_optimizer_in_backward`` before ``DistributedModelParallel`` shards them
(:func:`attach_table_optimizer`); :func:`combined_optimizer` then gives a ``CombinedOptimizer``
whose ``param_groups`` hold both: a schedule that sets ``lr`` there drives the tables too. FBGEMM
takes the table's ``lr`` at the forward pass, and the fused optimiser hands it over at ``step``
(and ``zero_grad``); the tables come first in the ``CombinedOptimizer``, so ``step(closure)``
(Lightning's call, which runs the forward inside the closure) sets it before the forward. A
hand-written loop must call ``step`` or ``zero_grad`` before the forward, or the tables lag the
schedule by one step. Importing this module needs TorchRec.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

Optimizer = type[torch.optim.Optimizer]


def attach_table_optimizer(tables: nn.Module, kind: Optimizer, lr: float) -> None:
    """Give every parameter of ``tables`` (an ``EmbeddingBagCollection``, before sharding) the
    fused optimiser ``kind`` at ``lr``: ``torch.optim.SGD`` becomes FBGEMM's EXACT_SGD,
    ``torch.optim.Adagrad`` its EXACT_ADAGRAD (one accumulator per weight, as torch's; TorchRec's
    ``RowWiseAdagrad``, one per row, is another optimiser and not used), with torch's ``eps``."""
    kwargs = {"lr": lr}
    eps = inspect.signature(kind).parameters.get("eps")
    if eps is not None:  # torch's default (Adagrad: 1e-10), not FBGEMM's (1e-8)
        kwargs["eps"] = eps.default
    apply_optimizer_in_backward(kind, tables.parameters(), kwargs)


def combined_optimizer(
    module: nn.Module, fused: torch.optim.Optimizer, kind: Optimizer, lr: float
) -> CombinedOptimizer:
    """``fused`` (the DMP's ``fused_optimizer``) and ``kind`` at ``lr`` over every parameter of
    ``module`` that has no fused optimiser (the MLPs), as one ``CombinedOptimizer``."""
    dense = dict(in_backward_optimizer_filter(module.named_parameters()))
    mlps = KeyedOptimizerWrapper(dense, lambda params: kind(params, lr=lr))
    return CombinedOptimizer([("tables", fused), ("dense", mlps)])
