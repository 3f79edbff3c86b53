"""Lightning callbacks that run one sparsity-sweep point during ``trainer.test``.

- :class:`Sparsify` prunes the embedding tables (and restores them afterwards);
- :class:`CheckpointCompression` measures the checkpoint's size on disk, reference zip and better;
- :class:`SparseCooTiming` times the dense and the reference's sparse-COO forward pass.

Each works alone, in any ``trainer.test``; together, driven by ``scripts/sweep.py``, they fill the
sweep's tables.
"""

from callbacks.compression import CheckpointCompression
from callbacks.sparsification import Sparsify
from callbacks.timing import SparseCooTiming

__all__ = ["CheckpointCompression", "Sparsify", "SparseCooTiming"]
