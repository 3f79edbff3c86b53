"""Embedding-table pruning: the sweep grid, DataNormSparsifier-identical masks, checkpoint size.

* `grid`: `GridPoint`, `default_grid()` (the benchmark's 80 points), validated `make_grid()`;
* `masks`: `keep_mask`, `prune`, `prune_tables` -- the reference's masks without its sort;
* `series`: `prune_tables_` (in place), `cuts_for_levels` + `apply_cuts` (cuts of a whole
  (norm, block shape) series from two counting passes, then one pass per level);
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
from .grid import GridPoint, default_grid, make_grid, squares_preserve_order
from .masks import keep_mask, prune, prune_tables
from .series import SeriesCuts, StaleCut, apply_cuts, cuts_for_levels, prune_tables_

__all__ = [
    "GridPoint", "default_grid", "make_grid", "squares_preserve_order",
    "keep_mask", "prune", "prune_tables",
    "prune_tables_", "cuts_for_levels", "apply_cuts", "SeriesCuts", "StaleCut",
    "SizeResult", "reference_zip_size", "zstd_sparse_size", "save_compressed", "load_compressed",
]
