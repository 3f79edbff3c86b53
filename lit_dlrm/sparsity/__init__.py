"""Embedding-table pruning and what is measured of it.

* `prune`: the pruning engine (DataNormSparsifier's masks): `cuts_for_levels`, `apply_cuts`,
  `prune.prune`; `global_threshold`: one threshold across all tables, as per-table cuts;
* `quantize`: row-wise symmetric int8/int4 that keeps pruned zeros zero;
* `compression`: checkpoint sizes (the reference's torch.save + deflate, sparse-shuffle-zstd);
* `compact`: pruned tables holding only their surviving blocks; `finetune`: masks held fixed;
* `chunks`: row chunks and a thread pool over tables, shared by the above.
"""

from .compression import load_compressed, reference_zip_size, save_compressed, zstd_sparse_size
from .global_threshold import global_counts, global_cuts
from .prune import StaleCut, TableCut, apply_cuts, cuts_for_counts, cuts_for_levels
from .quantize import quantize_dequantize_tables, quantized_state_dict

__all__ = [
    "cuts_for_levels",
    "cuts_for_counts",
    "apply_cuts",
    "TableCut",
    "StaleCut",
    "global_cuts",
    "global_counts",
    "quantize_dequantize_tables",
    "quantized_state_dict",
    "reference_zip_size",
    "zstd_sparse_size",
    "save_compressed",
    "load_compressed",
]
