"""DLRM, the network of facebookresearch/dlrm for Criteo, as a plain ``nn.Module``.

No Lightning here: this file is the model and nothing else, importable and testable alone.

    dense (B, 13) --bot_l--> x (B, d) ----------------------------.
    sparse (B, 26) --emb_l--> 26 x (B, d)  --interact--> z (B, d + 351) --top_l--> logit (B,)
                                   x ----'

With the Kaggle defaults (``d = 16``): bottom MLP 13-512-256-64-16, ReLU after every layer (the last
bottom layer too); 26 ``EmbeddingBag(sum)`` tables (one id per row and table, or several: multi-hot
:class:`lit_dlrm.bags.Bags`, each bag summed); ``dot`` interaction = the strictly lower
triangle of ``T @ T^T`` for ``T = [x, e_1 .. e_26]`` (27 vectors: 351 pairs, row-major order
(1,0), (2,0), (2,1), (3,0), ...) concatenated after ``x``: 367 features; top MLP 367-512-256-1.
The reference ends with a sigmoid; this network returns the logit and the loss is
BCE-with-logits (the same math, numerically stable).

``activation_sparsity`` (a plain attribute, 0 by default, not part of the state dict) zeroes
that fraction of each row of ``z`` before the top MLP, keeping the largest ``|z|``: the
reference benchmark's "sparsify the activations" follow-up (:func:`sparsify_activations`).

State-dict keys are the reference's (``emb_l.k.weight``, ``bot_l.i.{weight,bias}``,
``top_l.i.{weight,bias}``), so a facebookresearch/dlrm checkpoint loads as it is
(see :mod:`lit_dlrm.checkpoint`).

Example::

    >>> model = DLRM(table_sizes=[10] * 26)
    >>> dense, sparse = torch.rand(4, 13), torch.randint(0, 10, (4, 26))
    >>> model(dense, sparse).shape
    torch.Size([4])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lit_dlrm.bags import Bags

Interaction = Literal["dot", "cat"]


def mlp(sizes: Sequence[int], relu_last: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ...`` with a ReLU after each (after the last too
    when ``relu_last``). Layer ``i`` of the list sits at index ``2 * i`` (the reference's keys)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if relu_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def interaction_size(num_vectors: int, dim: int, interaction: Interaction) -> int:
    """Width of ``z``: the bottom output plus the pairwise dots (``dot``) or all the embeddings
    (``cat``) of ``num_vectors`` vectors (the bottom output and one per table)."""
    if interaction == "dot":
        return dim + num_vectors * (num_vectors - 1) // 2
    return dim * num_vectors


def sparsify_activations(z: Tensor, level: float) -> Tensor:
    """z (B, F) with the ``round(level * F)`` smallest-magnitude entries of each row set to 0.

    Top-k per row rather than one threshold: every sample keeps the same number of features,
    so the work of a sparse top MLP is the same for every row. Ties at the cut are broken by
    ``torch.topk``.
    """
    keep = z.shape[1] - round(level * z.shape[1])
    if keep >= z.shape[1]:
        return z
    index = z.abs().topk(keep, dim=1, sorted=False).indices  # (B, keep)
    return torch.zeros_like(z).scatter_(1, index, z.gather(1, index))


class DLRM(nn.Module):
    """The DLRM network.

    Args:
        table_sizes: rows of each embedding table (26 for Criteo).
        num_dense: number of dense features (13 for Criteo).
        embedding_dim: width of every embedding and of the bottom MLP's output.
        bottom_mlp: hidden widths of the bottom MLP (its output width is ``embedding_dim``).
        top_mlp: hidden widths of the top MLP (its output width is 1).
        interaction: ``"dot"`` (the reference for Kaggle) or ``"cat"``.
    """

    def __init__(
        self,
        table_sizes: Sequence[int],
        num_dense: int = 13,
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (512, 256, 64),
        top_mlp: Sequence[int] = (512, 256),
        interaction: Interaction = "dot",
    ) -> None:
        super().__init__()
        if interaction not in ("dot", "cat"):
            raise ValueError(f"interaction: expected 'dot' or 'cat', got {interaction!r}")
        self.interaction = interaction
        self.emb_l = nn.ModuleList(
            nn.EmbeddingBag(n, embedding_dim, mode="sum", sparse=True) for n in table_sizes
        )
        self.bot_l = mlp([num_dense, *bottom_mlp, embedding_dim], relu_last=True)
        z_size = interaction_size(len(table_sizes) + 1, embedding_dim, interaction)
        self.top_l = mlp([z_size, *top_mlp, 1], relu_last=False)
        self.activation_sparsity = 0.0  # fraction of each row of z zeroed before the top MLP
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference initialisation: tables U(-sqrt(1/n), sqrt(1/n)); Linear weights
        N(0, sqrt(2 / (fan_in + fan_out))), biases N(0, sqrt(1 / fan_out))."""
        for table in self.emb_l:
            bound = math.sqrt(1.0 / table.num_embeddings)
            table.weight.uniform_(-bound, bound)
        for layer in [*self.bot_l, *self.top_l]:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, math.sqrt(2.0 / (layer.in_features + layer.out_features)))
                layer.bias.normal_(0.0, math.sqrt(1.0 / layer.out_features))

    def embed(self, sparse: Tensor | Bags) -> list[Tensor]:
        """sparse (B, T) ids, one per table and row (the fast path), or multi-hot ``Bags`` ->
        T tensors (B, d): the sum of each bag's embeddings."""
        if isinstance(sparse, Bags):
            return [
                table(ids, offsets) for (ids, offsets), table in zip(sparse.per_table(), self.emb_l)
            ]
        return [table(sparse[:, k : k + 1]) for k, table in enumerate(self.emb_l)]

    def interact(self, x: Tensor, embeddings: list[Tensor]) -> Tensor:
        """x (B, d) and T embeddings (B, d) -> z (B, interaction width)."""
        if self.interaction == "cat":
            return torch.cat([x, *embeddings], dim=1)
        vectors = torch.stack([x, *embeddings], dim=1)  # (B, T+1, d)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, T+1, T+1)
        rows, cols = torch.tril_indices(gram.shape[1], gram.shape[2], offset=-1, device=x.device)
        return torch.cat([x, gram[:, rows, cols]], dim=1)  # row-major lower triangle

    def features(
        self, dense: Tensor, sparse: Tensor | Bags, bottom: Tensor | None = None
    ) -> Tensor:
        """dense (B, 13) float, sparse (B, 26) int or ``Bags`` -> z (B, 367), the top MLP's
        input. ``bottom``: ``bot_l(dense)`` (B, d) where it is already known."""
        x = self.bot_l(dense) if bottom is None else bottom
        z = self.interact(x, self.embed(sparse))
        return sparsify_activations(z, self.activation_sparsity) if self.activation_sparsity else z

    def forward(self, dense: Tensor, sparse: Tensor | Bags, bottom: Tensor | None = None) -> Tensor:
        """dense (B, 13) float, sparse (B, 26) int or ``Bags`` (multi-hot) -> click logits (B,);
        ``bottom`` as in :meth:`features`."""
        return self.top_l(self.features(dense, sparse, bottom)).squeeze(1)


def with_tables(model: DLRM, tables: Sequence[nn.Module]) -> DLRM:
    """A shallow copy of ``model`` (MLPs shared) whose ``emb_l`` is ``tables``: modules with
    ``EmbeddingBag(sum)``'s forward, ``ids (B, L)`` or ``ids, offsets`` -> ``(B, d)``."""
    out = copy.copy(model)
    out._modules = dict(model._modules)  # the copy's own module dict: emb_l replaced, not shared
    out.emb_l = nn.ModuleList(tables)
    return out
