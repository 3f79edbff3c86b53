"""State-dict keys of the two backends, converted both ways (no TorchRec needed).

    torch (reference, facebookresearch/dlrm)   torchrec
    emb_l.K.weight                             ebc.embedding_bags.tK.weight
    bot_l.*, top_l.*                           the same

Only the table keys differ; the tensors are the same objects, (rows, dim) in both. So a
facebookresearch/dlrm checkpoint loads into the TorchRec backend through :func:`to_torchrec`,
and a TorchRec-backend checkpoint reads as a reference one through :func:`from_torchrec`.
"""

from __future__ import annotations

import re

from torch import Tensor

EBC = "ebc"  # the TorchRec network's attribute holding the EmbeddingBagCollection
_TORCH_TABLE = re.compile(r"^emb_l\.(\d+)\.weight$")
_TORCHREC_TABLE = re.compile(rf"^{EBC}\.embedding_bags\.t(\d+)\.weight$")


def table_name(k: int) -> str:
    """The TorchRec name of table ``k`` (0-based): ``tK``; its feature is ``fK``."""
    return f"t{k}"


def feature_name(k: int) -> str:
    """The KeyedJaggedTensor key of table ``k``'s ids (the batch's column ``k``)."""
    return f"f{k}"


def to_torchrec(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A reference (``emb_l.K.weight``) state dict with TorchRec table keys; other keys, and keys
    already in TorchRec form, are kept as they are, in order."""
    out = {}
    for key, value in state.items():
        match = _TORCH_TABLE.match(key)
        out[f"{EBC}.embedding_bags.{table_name(int(match[1]))}.weight" if match else key] = value
    return out


def from_torchrec(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The reverse of :func:`to_torchrec`: TorchRec table keys as ``emb_l.K.weight``, others
    kept."""
    out = {}
    for key, value in state.items():
        match = _TORCHREC_TABLE.match(key)
        out[f"emb_l.{int(match[1])}.weight" if match else key] = value
    return out
