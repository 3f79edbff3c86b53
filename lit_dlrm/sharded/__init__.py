"""The TorchRec backend (``--model.backend=torchrec``): the same DLRM with its tables in a
TorchRec ``EmbeddingBagCollection``, so that ``DistributedModelParallel`` can shard them.

``keys`` converts state dicts between the two backends and needs no TorchRec; ``model`` (the
network) and ``strategy`` (sharded training under Lightning) import TorchRec, an optional extra
(README, "Scaling out").
"""
