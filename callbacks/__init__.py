"""Lightning callbacks that run one sparsity-sweep point during ``trainer.test``.

- :class:`Sparsify` prunes the embedding tables (and restores them afterwards);
- :class:`CheckpointCompression` measures the checkpoint's size on disk, reference zip and better;
- :class:`SparseCooTiming` times the dense and the reference's sparse-COO forward pass.

Each works alone in any ``trainer.test`` (Compression and Timing then measure the model as it is:
a ``dense`` row). The sweep (:mod:`lit_dlrm.sweep.driver`) binds them to one
:class:`~lit_dlrm.sweep.context.SweepContext`, from which they read the point; none imports another.
"""

from callbacks.compression import CheckpointCompression
from callbacks.sparsification import Sparsify
from callbacks.timing import SparseCooTiming

__all__ = ["CheckpointCompression", "Sparsify", "SparseCooTiming"]
