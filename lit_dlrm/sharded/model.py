"""``TorchRecDLRM``: :class:`lit_dlrm.model.DLRM` with its tables in a TorchRec
``EmbeddingBagCollection`` (``self.ebc``), fed a ``KeyedJaggedTensor``.

The MLPs, the interaction, ``activation_sparsity`` and the forward signature
``(dense (B, 13), sparse (B, T)) -> logits (B,)`` are DLRM's own (inherited); only
:meth:`embed` differs. Table ``k`` is ``EmbeddingBagConfig(name="tK", feature_names=["fK"],
pooling=SUM)``; the batch's column ``k`` becomes feature ``fK`` with one id per bag. State-dict
keys are :mod:`lit_dlrm.sharded.keys`'s (``ebc.embedding_bags.tK.weight``), converted to and
from the reference ones by :func:`~lit_dlrm.sharded.keys.to_torchrec` and
:func:`~lit_dlrm.sharded.keys.from_torchrec`. Importing this module needs TorchRec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from lit_dlrm.model import DLRM, Interaction, with_tables
from lit_dlrm.sharded.keys import feature_name, table_name


def table_configs(table_sizes: Sequence[int], embedding_dim: int) -> list[EmbeddingBagConfig]:
    """One sum-pooled ``EmbeddingBagConfig`` per table, initialised as the reference does:
    U(-sqrt(1/n), sqrt(1/n)) (applied by TorchRec, also shard by shard under DMP)."""
    return [
        EmbeddingBagConfig(
            name=table_name(k),
            embedding_dim=embedding_dim,
            num_embeddings=n,
            feature_names=[feature_name(k)],
            pooling=PoolingType.SUM,
            weight_init_min=-math.sqrt(1.0 / n),
            weight_init_max=math.sqrt(1.0 / n),
        )
        for k, n in enumerate(table_sizes)
    ]


def to_kjt(sparse: Tensor) -> KeyedJaggedTensor:
    """sparse (B, T) ids -> a ``KeyedJaggedTensor`` with keys ``f0..f{T-1}``, every bag one id
    (values feature-major: ``sparse.t()`` flattened)."""
    batch, tables = sparse.shape
    return KeyedJaggedTensor(
        keys=[feature_name(k) for k in range(tables)],
        values=sparse.t().reshape(-1),
        lengths=torch.ones(batch * tables, dtype=torch.int32, device=sparse.device),
    )


class TorchRecDLRM(DLRM):
    """The DLRM network of :class:`lit_dlrm.model.DLRM` (same arguments) with TorchRec tables.

    Args:
        table_device: where the tables are allocated: None (the CPU) or ``"meta"`` (not at all:
            ``DistributedModelParallel`` then allocates and initialises each rank's shards).
    """

    def __init__(
        self,
        table_sizes: Sequence[int],
        num_dense: int = 13,
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (512, 256, 64),
        top_mlp: Sequence[int] = (512, 256),
        interaction: Interaction = "dot",
        table_device: str | torch.device | None = None,
    ) -> None:
        with torch.device("meta"):  # DLRM's own tables are never allocated
            super().__init__(
                table_sizes, num_dense, embedding_dim, bottom_mlp, top_mlp, interaction
            )
        del self.emb_l
        self.to_empty(device="cpu")
        device = torch.device(table_device or "cpu")
        self.ebc = EmbeddingBagCollection(table_configs(table_sizes, embedding_dim), device=device)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DLRM's initialisation: the MLPs as :meth:`DLRM.reset_parameters`, the tables
        U(-sqrt(1/n), sqrt(1/n)). Tables on ``meta`` are left to DMP."""
        if "ebc" not in self._modules:  # DLRM.__init__'s call, on meta, before the tables exist
            return
        DLRM.reset_parameters(with_tables(self, []))  # the shared MLPs
        for config in self.ebc.embedding_bag_configs():
            weight = self.ebc.embedding_bags[config.name].weight
            if not weight.is_meta:
                config.init_fn(weight)

    def embed(self, sparse: Tensor) -> list[Tensor]:
        """sparse (B, T) ids -> T tensors (B, d), as :meth:`DLRM.embed`. Read by key: a sharded
        collection orders its output by shard, not by feature."""
        pooled = self.ebc(to_kjt(sparse)).to_dict()
        return [pooled[feature_name(k)] for k in range(sparse.shape[1])]
