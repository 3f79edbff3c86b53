"""``TorchRecStrategy``: Lightning's DDP strategy with the network's tables sharded by TorchRec.

    --trainer.strategy=lit_dlrm.sharded.strategy.TorchRecStrategy
    --trainer.strategy.sharding_type=table_wise|column_wise|row_wise   (row_wise: CUDA only)

DDP's launcher, process group, samplers and collectives are kept; where DDP would wrap the
LightningModule, this strategy wraps its network (``module.model``, a
:class:`~lit_dlrm.sharded.model.TorchRecDLRM` built with its tables on ``meta``) in TorchRec's
``DistributedModelParallel`` with a plan from ``EmbeddingShardingPlanner`` in which every table
has ``sharding_type``. DMP allocates each rank's shards only, and wraps the MLPs in DDP itself,
so the LightningModule is not wrapped again. The tables train with the fused
``--model.optimizer`` (:mod:`lit_dlrm.sharded.optim`). Needs ``--model.backend=torchrec``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv

from lit_dlrm.module import OPTIMIZERS
from lit_dlrm.sharded import checkpoint as sharded_checkpoint
from lit_dlrm.sharded.model import TorchRecDLRM
from lit_dlrm.sharded.optim import Optimizer, attach_table_optimizer
from lit_dlrm.sharded.shards import load_whole

ShardingType = Literal["table_wise", "column_wise", "row_wise"]


def shard(
    model: TorchRecDLRM, sharding_type: ShardingType, device, kind: Optimizer, lr: float
) -> DistributedModelParallel:
    """``model`` in DMP over the default process group, every table ``sharding_type``, the
    tables' fused optimiser ``kind`` (a torch or TorchRec optimiser class) at ``lr`` attached;
    each rank holds its shards only."""
    attach_table_optimizer(model.ebc, kind, lr)
    sharders = [EmbeddingBagCollectionSharder()]
    world = dist.get_world_size()
    # Column-wise: one slice of the dimension per rank (TorchRec's default floor, 128 columns,
    # would leave Criteo's 16-wide tables whole).
    constraints = {
        config.name: ParameterConstraints(
            sharding_types=[sharding_type],
            min_partition=max(1, config.embedding_dim // world),
        )
        for config in model.ebc.embedding_bag_configs()
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type), constraints=constraints
    )
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    return DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=device,
        plan=plan,
        sharders=sharders,
    )


class TorchRecStrategy(DDPStrategy):
    """DDP with the tables sharded by TorchRec (see the module docstring).

    Args:
        sharding_type: how every table is split over the processes: ``"table_wise"`` (whole
            tables), ``"column_wise"`` (the embedding dimension split) or ``"row_wise"`` (the
            rows split; FBGEMM runs it on CUDA only).
        process_group_backend, timeout, start_method: :class:`DDPStrategy`'s. Its options for
            the DDP wrapper are not offered: DMP wraps the MLPs in DDP with its own.
    """

    shards_tables = True  # read by DLRMModule.configure_model: build the tables on meta

    def __init__(
        self,
        sharding_type: ShardingType = "table_wise",
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
    ) -> None:
        if sharding_type not in ("table_wise", "column_wise", "row_wise"):
            raise ValueError(
                "trainer.strategy.sharding_type: expected 'table_wise', 'column_wise' or "
                f"'row_wise', got {sharding_type!r}"
            )
        super().__init__(
            process_group_backend=process_group_backend, timeout=timeout, start_method=start_method
        )
        self.sharding_type = sharding_type
        self._loading: Path | None = None  # the sharded checkpoint being restored

    def setup(self, trainer: L.Trainer) -> None:
        """The network sharded, then Lightning's base ``Strategy.setup`` (device, precision,
        optimisers). ``DDPStrategy.setup`` is skipped on purpose: it wraps the module in DDP and,
        outside fitting, broadcasts rank 0's parameters, which would overwrite other ranks'
        shards with rank 0's (DMP has put the MLPs in DDP already)."""
        self._shard()
        super(DDPStrategy, self).setup(trainer)

    def _shard(self) -> None:
        """Wrap the module's network in DMP, once (before a checkpoint loads, or at setup)."""
        module = self.lightning_module
        if not isinstance(module.model, DistributedModelParallel):
            if not isinstance(module.model, TorchRecDLRM):
                raise ValueError(
                    "trainer.strategy=TorchRecStrategy shards the TorchRec backend's tables: "
                    f"expected --model.backend=torchrec, got {module.hparams.backend!r}"
                )
            if self.sharding_type == "row_wise" and self.root_device.type != "cuda":
                raise ValueError(
                    "trainer.strategy.sharding_type=row_wise: FBGEMM shards rows on CUDA "
                    f"only, the device is {self.root_device.type}"
                )
            h = module.hparams
            network = module.model
            # Tables built whole (a model read from one file, for the sweep) keep their weights:
            # DMP makes new shards, filled from them.
            tables = network.ebc.state_dict().values()
            whole = None if any(t.is_meta for t in tables) else network.state_dict()
            module.model = shard(
                network, self.sharding_type, self.root_device, OPTIMIZERS[h.optimizer], h.lr
            )
            if whole is not None:
                load_whole(module.model, whole)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        return model

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Every rank writes its shards into a sharded checkpoint directory
        (:mod:`lit_dlrm.sharded.checkpoint`)."""
        if storage_options is not None:
            raise ValueError(f"{filepath}: sharded checkpoints take no storage_options")
        sharded_checkpoint.save(checkpoint, filepath)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """The checkpoint at ``checkpoint_path`` with this rank's shards of the module's state
        (the network is sharded first); the optimisers' states are read by
        :meth:`load_optimizer_state_dict`, once the optimisers exist."""
        path = Path(checkpoint_path)
        if not sharded_checkpoint.is_sharded(path):
            raise ValueError(
                f"--ckpt_path: {path} is not a sharded checkpoint directory of TorchRecStrategy "
                "(a one-file checkpoint loads into --model.backend=torchrec without the strategy)"
            )
        self._shard()
        checkpoint = self.checkpoint_io.load_checkpoint(
            path / sharded_checkpoint.META, weights_only=weights_only
        )
        template = {"state_dict": self.lightning_module.state_dict()}
        checkpoint.update(sharded_checkpoint.load_into(path, template))
        checkpoint["optimizer_states"] = []  # in the directory: load_optimizer_state_dict reads it
        self._loading = path
        return checkpoint

    def load_model_state_dict(self, checkpoint: dict, strict: bool = True) -> None:
        """The network's entries (``model.*``, the module's only ones) through DMP's own
        ``load_state_dict``, which knows the keys without its wrappers' prefixes."""
        state = checkpoint["state_dict"]
        if strict and any(not key.startswith("model.") for key in state):
            raise ValueError(f"state_dict: expected only model.* keys, got {sorted(state)[:3]}")
        network = {k.removeprefix("model."): v for k, v in state.items()}
        self.lightning_module.model.load_state_dict(network, strict=strict)

    def load_optimizer_state_dict(self, checkpoint: dict) -> None:
        template = {"optimizer_states": [opt.state_dict() for opt in self.optimizers]}
        states = sharded_checkpoint.load_into(self._loading, template)["optimizer_states"]
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)
