"""TorchRec's sharded tables against today's replicated ones: training samples/s, memory per rank,
sweep time per point; one process and two.

Five sides, each a fresh set of spawned processes (gloo, CPU) per run, ``repeats`` runs in ABBA
order:

- ``torch_1``: the torch backend (``DLRM``, ``nn.EmbeddingBag`` tables, SGD on sparse gradients);
- ``torchrec_1``: the TorchRec backend in ``DistributedModelParallel`` over one process (the
  tables' fused SGD: :func:`lit_dlrm.sharded.strategy.shard`);
- ``torch_2``: the torch backend over 2 processes as ``DLRMModule`` trains it under DDP today:
  every rank holds every table, the MLPs in DDP, the tables' sparse gradients averaged by
  :mod:`lit_dlrm.sparse_sync`;
- ``torchrec_table_wise_2``, ``torchrec_column_wise_2``: DMP over 2 processes, every table
  table-wise (whole tables spread over the ranks) or column-wise (every table's dimension split).

Every side starts from the same weights (tables drawn per table from its own seed, so a rank
draws only what it loads; the MLPs of seed 0), trains on the same random batches (ids uniform
over each table; each rank the same half of each global batch) with the same steps and lr, in a
hand-written loop (Lightning's own cost is ``benchmarks.train_throughput``'s), then runs the
sweep's per-point work on the trained tables: :func:`lit_dlrm.sparsity.prune.prune` (L1, (1, 1)
blocks, per-table threshold) of the tables the rank holds, into the weights the model reads
(TorchRec's: the cuts from :func:`lit_dlrm.sparsity.sharded.shard_cuts`, as the sweep's),
then a test pass over the evaluation batches (each rank half of each) with ``ClickMetrics``
gathered over the ranks.

Same work, checked across all sides and runs: the per-step training loss (mean over ranks)
within 1e-4 relative, every trained table's sum within 1e-4 (relative, at least absolute), every
MLP weight within 1e-5 (an MLP matrix's sum drifts with float order beyond a fixed tolerance),
and per sweep point the test log loss and AUC within 1e-5 and the count of zeroed weights equal.
Figures: samples/s of the training loop (the global batch times the steps over rank 0's seconds
between two barriers); seconds per sweep point (prune + test pass + metrics); and, per rank, the
table MiB it holds (the local shards' bytes) and its peak RSS (``VmHWM``: the whole process,
imports included; TorchRec's sides also load FBGEMM).

    python -m benchmarks.torchrec_scaling --scale small
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from benchmarks.harness import (
    OURS,
    REF,
    REPEATS,
    Sample,
    alternate,
    check_same_work,
    compare,
    main_for,
)
from benchmarks.memory import peak_rss_mib, rss_mib
from benchmarks.train_throughput import random_batches
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.metrics import ClickMetrics
from lit_dlrm.model import DLRM
from lit_dlrm.sharded.shards import held_tables
from lit_dlrm.sparse_sync import average_sparse_grads, ignore_in_ddp
from lit_dlrm.sparsity.prune import apply_cuts, prune
from lit_dlrm.sparsity.sharded import shard_cuts


@dataclass(frozen=True)
class Side:
    """How one side trains: ``backend`` ("torch" or "torchrec"), ``world`` processes and, for
    TorchRec, every table's ``sharding`` ("table_wise" or "column_wise")."""

    backend: str
    world: int
    sharding: str | None = None


SIDES = {
    "torch_1": Side("torch", 1),
    "torchrec_1": Side("torchrec", 1, "table_wise"),
    "torch_2": Side("torch", 2),
    "torchrec_table_wise_2": Side("torchrec", 2, "table_wise"),
    "torchrec_column_wise_2": Side("torchrec", 2, "column_wise"),
}


@dataclass(frozen=True)
class Scale:
    """``cap``: rows per Kaggle table at most; ``batch``: the global batch; ``steps`` of
    training; ``eval_batches`` of ``batch`` rows per sweep point; ``levels``: the points."""

    cap: int
    batch: int
    steps: int
    eval_batches: int
    levels: tuple[float, ...]


SCALES = {
    "tiny": Scale(cap=2_000, batch=64, steps=4, eval_batches=2, levels=(0.5, 0.9)),
    "small": Scale(cap=1_000_000, batch=2048, steps=40, eval_batches=4, levels=(0.5, 0.9)),
}
LR = 0.1
SWEEP_POINT = ("L1", (1, 1))  # norm, block shape; per-table threshold


def table_sizes(scale: Scale) -> list[int]:
    return [min(n, scale.cap) for n in KAGGLE_TABLE_SIZES]


class InitialWeights(Mapping):
    """The starting state dict of every side (reference keys), a table drawn only when read:
    table ``k`` is U(-sqrt(1/n), sqrt(1/n)) from a generator seeded ``k`` (the reference's
    range), the MLPs those of ``DLRM`` at seed 0. A rank holding part of the tables so never
    holds all of them at once."""

    def __init__(self, sizes: list[int], embedding_dim: int = 16) -> None:
        self.sizes, self.dim = sizes, embedding_dim
        torch.manual_seed(0)
        self.mlps = {
            k: v for k, v in DLRM([1] * len(sizes)).state_dict().items() if "emb_l" not in k
        }

    def table(self, k: int) -> torch.Tensor:
        n, bound = self.sizes[k], math.sqrt(1.0 / self.sizes[k])
        g = torch.Generator().manual_seed(k)
        return torch.empty(n, self.dim).uniform_(-bound, bound, generator=g)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key.startswith("emb_l."):
            return self.table(int(key.split(".")[1]))
        return self.mlps[key]

    def __iter__(self):
        yield from (f"emb_l.{k}.weight" for k in range(len(self.sizes)))
        yield from self.mlps

    def __len__(self) -> int:
        return len(self.sizes) + len(self.mlps)


class TorchRecKeys(Mapping):
    """``InitialWeights`` under the TorchRec backend's keys, still drawn only when read."""

    def __init__(self, weights: InitialWeights) -> None:
        from lit_dlrm.sharded.keys import to_torchrec

        self.weights = weights
        self.reference = dict(zip(to_torchrec(dict.fromkeys(weights)), weights))

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.weights[self.reference[key]]

    def __iter__(self):
        return iter(self.reference)

    def __len__(self) -> int:
        return len(self.reference)


# ------------------------------------------------------------------------ one rank of a side


@dataclass
class Built:
    """One rank's network: ``network`` (what is called), ``optimizer``; ``held``: every
    parameter tensor the rank holds by reference key (``#i``: the rank's i-th shard of it) with
    whether it is split over the ranks; ``tables``: the table tensors (shards) the rank trains and
    prunes; ``emb``: the torch backend's ``nn.EmbeddingBag`` list (None for TorchRec)."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    held: dict[str, tuple[torch.Tensor, bool]]
    tables: list[torch.Tensor]
    emb: torch.nn.ModuleList | None = None

    @property
    def table_bytes(self) -> int:
        return sum(t.nbytes for t in self.tables)


def build(side: Side, weights: InitialWeights) -> Built:
    """``side``'s network on this rank, holding ``weights`` (its shards of them)."""
    sizes = weights.sizes
    if side.backend == "torch":
        network = DLRM(sizes)
        with torch.no_grad():
            for key, value in network.state_dict().items():
                value.copy_(weights[key])
        held = {k: (v, False) for k, v in network.state_dict().items()}
        tables = [t.weight for t in network.emb_l]
        call = network
        if side.world > 1:  # DLRMModule under DDP: tables out of DDP, lit_dlrm.sparse_sync
            ignore_in_ddp(network, [f"emb_l.{k}.weight" for k in range(len(sizes))])
            call = torch.nn.parallel.DistributedDataParallel(network)
        optimizer = torch.optim.SGD(network.parameters(), lr=LR)
        return Built(call, optimizer, held, tables, network.emb_l)

    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from lit_dlrm.sharded.keys import from_torchrec
    from lit_dlrm.sharded.model import TorchRecDLRM
    from lit_dlrm.sharded.optim import combined_optimizer
    from lit_dlrm.sharded.shards import load_whole
    from lit_dlrm.sharded.strategy import shard

    network = shard(
        TorchRecDLRM(sizes, table_device="meta"),
        side.sharding,
        torch.device("cpu"),
        torch.optim.SGD,
        LR,
    )
    load_whole(network, TorchRecKeys(weights))
    optimizer = combined_optimizer(network, network.fused_optimizer, torch.optim.SGD, LR)
    held, tables = {}, []
    for key, value in from_torchrec(network.state_dict()).items():
        if isinstance(value, ShardedTensor):
            for i, s in enumerate(value.local_shards()):
                held[f"{key}#{i}"] = (s.tensor, True)
                tables.append(s.tensor)
        else:
            held[key] = (value, False)
    return Built(network, optimizer, held, tables)


def fingerprint(held: dict, rank: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """-> (each table's sum: split tables summed over the ranks' shards, whole ones by rank 0;
    the MLPs' weights, rank 0's, whole: replicated and small)."""
    sums: dict[str, float] = {}
    mlps = {}
    for key, (value, split) in held.items():
        name = key.split("#")[0]
        if name.startswith("emb_l.") and (split or rank == 0):
            sums[name] = sums.get(name, 0.0) + float(value.detach().double().sum())
        elif rank == 0 and not name.startswith("emb_l."):
            mlps[name] = value.detach().clone()
    return sums, mlps


def halves(scale: Scale, count: int, seed: int, rank: int, world: int) -> list[tuple]:
    """This rank's share of ``count`` global batches (the same rows on every side)."""
    mine = slice(rank * scale.batch // world, (rank + 1) * scale.batch // world)
    return [
        tuple(x[mine] for x in b)
        for b in random_batches(table_sizes(scale), scale.batch, count, seed)
    ]


def train_rank(rank: int, world: int, init: str, side: Side, scale: Scale, out: str) -> None:
    """One rank of ``side``: build, train ``scale.steps`` steps on its half of every global
    batch, run the sweep's points, save what it measured to
    ``out.{rank}.pt``. Torch threads: the CPUs shared out over the ranks."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    record = measure_rank(rank, world, side, scale)
    # The network (its DDP reducer holds the process group) is freed before the group: freed
    # after it, the reducer's teardown can wait forever on gloo's thread.
    gc.collect()
    torch.save(record, f"{out}.{rank}.pt")
    dist.destroy_process_group()


def measure_rank(rank: int, world: int, side: Side, scale: Scale) -> dict:
    """What :func:`train_rank` saves."""
    base_rss = rss_mib()
    b = build(side, InitialWeights(table_sizes(scale)))
    network, optimizer = b.network, b.optimizer
    sync = [t.weight for t in b.emb] if side.backend == "torch" and world > 1 else None
    losses = []
    batches = halves(scale, scale.steps, 1, rank, world)
    dist.barrier()
    start = time.perf_counter()
    for dense, sparse, labels in batches:

        def closure(dense=dense, sparse=sparse, labels=labels):
            """Lightning's order: forward, zero_grad, backward (then the averaging DLRMModule
            does before the step), all inside ``step``."""
            loss = F.binary_cross_entropy_with_logits(network(dense, sparse), labels)
            optimizer.zero_grad()
            loss.backward()
            if sync:
                average_sparse_grads(sync)
            losses.append(loss.detach())  # TorchRec's CombinedOptimizer returns None
            return loss

        optimizer.step(closure)
    dist.barrier()
    record = {
        "train_s": time.perf_counter() - start,
        "losses": torch.stack(losses).tolist(),
        **dict(zip(("sums", "mlps"), fingerprint(b.held, rank))),
        "table_bytes": b.table_bytes,
        "base_rss_mib": base_rss,
    }
    record["sweep"] = sweep_points(b, side, scale, rank, world)
    record["peak_rss_mib"] = peak_rss_mib()
    dist.barrier()
    return record


@torch.no_grad()
def sweep_points(b: Built, side: Side, scale: Scale, rank: int, world: int) -> dict:
    """The sweep's work per point at each of ``scale.levels``: prune the rank's tables from
    their trained (dense) values into the weights the network reads, test, gather the metrics
    -> seconds per point and, per point, (log loss, AUC, zeroed weights this rank counts)."""
    norm, block = SWEEP_POINT
    # the torch backend swaps pruned buffers in (Sparsify's way); FBGEMM's weights cannot be
    # swapped, so TorchRec's are pruned into, with cuts the ranks agree on from all the shards
    held = held_tables(b.network) if b.emb is None else None
    live = b.tables if held is None else [s.weight for s in held.shards]
    dense = [t.detach().clone() for t in live]  # the sweep keeps the dense tables aside
    out = [torch.empty_like(t) for t in dense] if held is None else live
    evals = halves(scale, scale.eval_batches, 2, rank, world)
    b.network.eval()
    points, seconds = [], 0.0
    for level in scale.levels:
        dist.barrier()
        start = time.perf_counter()
        if held is None:
            pruned = prune(dense, norm, block, level, out=out)
        else:
            shards = [s._replace(weight=d) for s, d in zip(held.shards, dense)]
            cuts = shard_cuts(shards, held.shapes, norm, block, [level], reduce=held.reduce)
            pruned = apply_cuts(dense, cuts.for_level(level), norm, block, out=out)
        if b.emb is not None:
            for table, p in zip(b.emb, pruned):
                table.weight.data = p
        metrics = ClickMetrics()
        for d, s, labels in evals:
            metrics.update(b.network(d, s), labels)
        values = metrics.compute()
        seconds += time.perf_counter() - start
        counted = rank == 0 or side.backend == "torchrec"  # replicas: rank 0's copy only
        zeros = sum(int((t == 0).sum()) for t in pruned) if counted else 0
        points.append((values["log_loss"], values["auc"], zeros))
    return {"seconds_per_point": seconds / len(scale.levels), "points": points}


# ---------------------------------------------------------------------------- the parent


def run_side(side: Side, scale: Scale) -> list[dict]:
    """Spawn ``side``'s processes once -> each rank's record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank")
        mp.spawn(train_rank, args=(side.world, f"{tmp}/init", side, scale, out), nprocs=side.world)
        return [torch.load(f"{out}.{r}.pt") for r in range(side.world)]


@dataclass
class Work:
    """What a run produced, compared across sides: the per-step loss (mean over ranks), every
    table's sum, the MLPs' weights, each sweep point's (log loss, AUC, zeroed weights)."""

    losses: list[float]
    sums: dict[str, float]
    mlps: dict[str, torch.Tensor]
    points: list[tuple]

    def __repr__(self) -> str:
        return f"Work(losses={self.losses[:3]}..., points={self.points})"


def work_of(ranks: list[dict]) -> Work:
    losses = [
        sum(r["losses"][i] for r in ranks) / len(ranks) for i in range(len(ranks[0]["losses"]))
    ]
    sums: dict[str, float] = {}
    for r in ranks:
        for key, value in r["sums"].items():
            sums[key] = sums.get(key, 0.0) + value
    per_rank = [r["sweep"]["points"] for r in ranks]
    points = [(p[0], p[1], sum(q[i][2] for q in per_rank)) for i, p in enumerate(per_rank[0])]
    return Work(losses, sums, ranks[0]["mlps"], points)


def close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a))


def same_training(a: Work, b: Work) -> bool:
    return (
        len(a.losses) == len(b.losses)
        and all(close(x, y, 1e-4) for x, y in zip(a.losses, b.losses))
        and a.sums.keys() == b.sums.keys()
        and all(close(a.sums[k], b.sums[k], 1e-4) for k in a.sums)
        and a.mlps.keys() == b.mlps.keys()
        and all(float((a.mlps[k] - b.mlps[k]).abs().max()) <= 1e-5 for k in a.mlps)
    )


def same_sweep(a: Work, b: Work) -> bool:
    return len(a.points) == len(b.points) and all(
        close(p[0], q[0], 1e-5) and close(p[1], q[1], 1e-5) and p[2] == q[2]
        for p, q in zip(a.points, b.points)
    )


def run(scale_name: str = "small", repeats: int | None = None) -> list[dict]:
    """All sides, ``repeats`` runs each in ABBA order -> the harness's rows."""
    repeats = repeats or REPEATS[scale_name]
    scale = SCALES[scale_name]
    ranks: dict[str, list[list[dict]]] = {name: [] for name in SIDES}

    def side_run(name: str):
        def go() -> Sample:
            records = run_side(SIDES[name], scale)
            ranks[name].append(records)
            rate = scale.batch * scale.steps / records[0]["train_s"]
            return Sample(rate, work=work_of(records))

        return go

    samples = alternate({name: side_run(name) for name in SIDES}, repeats)
    check_same_work(
        "training",
        samples,
        same_training,
        "the same per-step losses and table sums (1e-4 relative), MLP weights within 1e-5",
    )
    check_same_work(
        "sweep", samples, same_sweep, "the same log loss and AUC (1e-5) and zeroed weights"
    )
    total_mib = sum(table_sizes(scale)) * 16 * 4 / 2**20
    what = (
        f"Kaggle tables capped at {scale.cap:,} rows ({total_mib:,.0f} MiB), global batch "
        f"{scale.batch}, {scale.steps} steps, SGD lr {LR}"
    )
    rows = []
    pairs = [  # (stage, lit_dlrm side, reference side)
        ("1 process", "torchrec_1", "torch_1"),
        ("2 processes, table_wise", "torchrec_table_wise_2", "torch_2"),
        ("2 processes, column_wise", "torchrec_column_wise_2", "torch_2"),
    ]
    for stage, ours, ref in pairs:
        rows.append(
            compare(
                f"train, {stage}",
                "samples/s",
                {OURS: samples[ours], REF: samples[ref]},
                better="higher",
                note=f"lit_dlrm: {ours}, reference: {ref}; {what}",
            )
        )
    for stage, ours, ref in pairs:
        points = {
            side: [Sample(r[0]["sweep"]["seconds_per_point"]) for r in ranks[side]]
            for side in (ours, ref)
        }
        rows.append(
            compare(
                f"sweep point, {stage}",
                "s",
                {OURS: points[ours], REF: points[ref]},
                note=f"lit_dlrm: {ours}, reference: {ref}; prune {SWEEP_POINT[0]} "
                f"{SWEEP_POINT[1]} per table at {list(scale.levels)} + test of "
                f"{scale.eval_batches} x {scale.batch} rows; mean per point",
            )
        )
    for stage, ours, ref in pairs:
        for rank in range(SIDES[ours].world):
            for key, unit, name in (
                ("table_bytes", "MiB", "tables held"),
                ("peak_rss_mib", "MiB", "peak RSS"),
            ):
                scale_of = 2**-20 if key == "table_bytes" else 1.0
                memory = {
                    side: [Sample(r[rank][key] * scale_of) for r in ranks[side]]
                    for side in (ours, ref)
                }
                rows.append(
                    compare(
                        f"{name}, {stage}, rank {rank}",
                        unit,
                        {OURS: memory[ours], REF: memory[ref]},
                        note=f"lit_dlrm: {ours}, reference: {ref}",
                    )
                )
    return rows


NOTES = (
    "ratio: of the medians; > 1 means lit_dlrm (the TorchRec side) is better (lit_dlrm / "
    "reference for samples/s, reference / lit_dlrm for seconds and MiB). Every side runs in "
    "fresh spawned processes (gloo), torch threads = CPUs / processes; samples/s: the global "
    "batch times the steps over rank 0's seconds of the training loop, between barriers "
    "(building the network and loading its weights not counted). Sweep point: the sweep's "
    "prune (lit_dlrm.sparsity.prune) of the tables the rank holds plus a test pass with the "
    "metrics gathered, in a hand-written loop; where a table is split (column-wise) its ranks"
    " agree on its cut from all its shards (lit_dlrm.sparsity.sharded.shard_cuts). tables "
    "held: the bytes of the table shards the rank holds. peak RSS: the rank's VmHWM, its "
    "whole life (imports, TorchRec's FBGEMM included). Every run of every side is checked to "
    "have done the same work (per-step loss, table sums, MLP weights, each sweep point's log "
    "loss, AUC and zeroed weights); a run that did not fails the benchmark."
)


def main(argv: list[str] | None = None) -> None:
    main_for("torchrec_scaling", run, argv, __doc__.splitlines()[0], sorted(SCALES), notes=NOTES)


if __name__ == "__main__":
    main()
