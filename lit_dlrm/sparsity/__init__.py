"""Embedding-table pruning: DataNormSparsifier-identical masks, checkpoint size.

* `masks`: `keep_mask`, `prune`, `prune_tables` -- the reference's masks without its sort;
* `series`: `prune_tables_` (in place), `cuts_for_levels` + `apply_cuts` (cuts of a whole
  (norm, block shape) series from two counting passes, then one pass per level);
* `global_threshold`: `global_cuts` / `global_counts` -- one threshold across all tables
  (the K lowest blocks of all tables), as per-table cuts that `apply_cuts` takes;
* `quantize`: row-wise symmetric int8/int4 quantization that keeps pruned zeros exactly zero
  (`quantize_rows`, `dequantize`, `quantize_dequantize`, `quantized_state_dict`);
* `compression`: `reference_zip_size` (torch.save + deflate) and the sparse-shuffle-zstd format
  (`zstd_sparse_size`, `save_compressed`, `load_compressed`).
"""

from .compression import (
    SizeResult,
    load_compressed,
    reference_zip_size,
    save_compressed,
    zstd_sparse_size,
)
from .global_threshold import global_counts, global_cuts
from .masks import keep_mask, prune, prune_tables
from .quantize import (
    QuantizedTable,
    dequantize,
    load_quantized_state_dict,
    quantize_dequantize,
    quantize_dequantize_tables,
    quantize_rows,
    quantized_state_dict,
)
from .series import (
    SeriesCuts,
    StaleCut,
    apply_cuts,
    cuts_for_counts,
    cuts_for_levels,
    prune_tables_,
)

__all__ = [
    "keep_mask",
    "prune",
    "prune_tables",
    "prune_tables_",
    "cuts_for_levels",
    "cuts_for_counts",
    "apply_cuts",
    "SeriesCuts",
    "StaleCut",
    "global_cuts",
    "global_counts",
    "QuantizedTable",
    "quantize_rows",
    "dequantize",
    "quantize_dequantize",
    "quantize_dequantize_tables",
    "quantized_state_dict",
    "load_quantized_state_dict",
    "SizeResult",
    "reference_zip_size",
    "zstd_sparse_size",
    "save_compressed",
    "load_compressed",
]
