"""The ranks of test_torchrec_sharded.py's 2-process checks (gloo, CPU), in a module light
enough for spawned processes to import fast."""

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lit_dlrm.model import DLRM
from lit_dlrm.module import OPTIMIZERS
from lit_dlrm.sharded import checkpoint as sharded_checkpoint
from lit_dlrm.sharded.keys import to_torchrec
from lit_dlrm.sharded.model import TorchRecDLRM
from lit_dlrm.sharded.optim import combined_optimizer
from lit_dlrm.sharded.shards import held_tables, load_whole
from lit_dlrm.sharded.strategy import shard
from lit_dlrm.sparsity.prune import apply_cuts
from lit_dlrm.sparsity.sharded import shard_cuts


def in_group(rank, world, init_file, work, *args) -> None:
    """Run ``work(rank, world, *args)`` in a gloo group and destroy the group after the work's
    objects are freed: a DMP network's DDP reducer holds the group, and freed after it, its
    teardown can abort or wait forever on gloo's thread."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        work(rank, world, *args)
    finally:
        gc.collect()
        dist.destroy_process_group()


def train_sharded(rank, world, init_file, *args) -> None:
    """:func:`train` in a group of ``world`` ranks."""
    in_group(rank, world, init_file, train, *args)


def train_then_prune_sharded(rank, world, init_file, train_args, prune_args) -> None:
    """:func:`train`, then :func:`prune` of the checkpoint it saved, in one group of ``world``
    ranks (one start of the processes for both)."""

    def both(rank, world):
        train(rank, world, *train_args)
        gc.collect()  # the trained network's reducer, before the next network takes the group
        dist.barrier()  # every rank's shards saved before any rank loads them
        prune(rank, world, *prune_args)

    in_group(rank, world, init_file, both)


def train(rank, world, arch, sharding_type, optimizer, lr, steps, out):
    """Shard a DLRM (seed 0) ``sharding_type``, train it on this rank's share of ``steps``
    (dense, sparse, labels) batches with ``optimizer`` (the lr halved after every step), save it
    sharded into ``out``, and record the shard offsets this rank held in ``out.held.{rank}.pt``."""
    torch.manual_seed(0)
    whole = DLRM(**arch).state_dict()
    network = shard(
        TorchRecDLRM(**arch, table_device="meta"),
        sharding_type,
        torch.device("cpu"),
        OPTIMIZERS[optimizer],
        lr,
    )
    load_whole(network, to_torchrec(whole))
    opt = combined_optimizer(network, network.fused_optimizer, OPTIMIZERS[optimizer], lr)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # tables too
    for dense, sparse, labels in steps:
        mine = slice(rank * len(labels) // world, (rank + 1) * len(labels) // world)

        def closure(dense=dense[mine], sparse=sparse[mine], labels=labels[mine]):
            """Lightning's order: forward, zero_grad, backward, all inside ``step``."""
            loss = F.binary_cross_entropy_with_logits(network(dense, sparse), labels)
            opt.zero_grad()
            loss.backward()
            return loss

        opt.step(closure)
        schedule.step()
    state = network.state_dict()
    held = {
        key: [tuple(s.metadata.shard_offsets) for s in value.local_shards()]
        for key, value in state.items()
        if hasattr(value, "local_shards")
    }
    sharded_checkpoint.save({"state_dict": state}, out)
    torch.save(held, f"{out}.held.{rank}.pt")


def prune(rank, world, arch, sharding_type, ckpt, combos, levels, out):
    """Load the sharded checkpoint ``ckpt`` into a DMP sharded ``sharding_type``, prune its
    shards in place at each (norm, block shape, threshold) of ``combos`` and each of ``levels``
    (cuts agreed over the ranks), and save what this rank holds, pruned, as
    ``out.{rank}.pt``: ``{(combo, level): [(table, offset, shard)]}``; the tables are put back
    dense between points."""
    network = shard(
        TorchRecDLRM(**arch, table_device="meta"),
        sharding_type,
        torch.device("cpu"),
        OPTIMIZERS["sgd"],
        0.1,
    )
    sharded_checkpoint.load_into(ckpt, {"state_dict": network.state_dict()})
    shards, shapes, reduce, _ = held_tables(network)
    dense = [s.weight.clone() for s in shards]
    held = {}
    for norm, bs, threshold in combos:
        series = shard_cuts(shards, shapes, norm, bs, levels, threshold=threshold, reduce=reduce)
        for level in levels:
            live = [s.weight for s in shards]
            apply_cuts(dense, series.for_level(level), norm, bs, out=live)
            again = held_tables(network).shards  # read back through the network
            held[(norm, bs, threshold, level)] = [
                (s.table, s.offset, s.weight.clone()) for s in again
            ]
            for w, d in zip(live, dense):
                w.copy_(d)
    torch.save(held, f"{out}.{rank}.pt")
