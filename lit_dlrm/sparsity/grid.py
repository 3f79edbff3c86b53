"""The sparsity sweep grid: which points are pruned, and how.

One source of truth for the default grid of the PyTorch data-sparsifier DLRM benchmark:
norms L1 and L2, block shapes (1, 1) and (1, 4), and 20 levels
0.0, 0.1, ..., 0.9, 0.91, ..., 0.99, 1.0 -- 80 nominal points.

Past the reference, a point has four more dimensions, each defaulting to the reference's choice:

* ``threshold``: ``per_table`` (the reference: every table loses ``level`` of its blocks) or
  ``global`` (one score threshold across all tables removes ``level`` of all blocks together);
* ``weight_bits``: 32 (float tables), or 8 / 4 (row-wise symmetric integer quantisation of the
  pruned tables, :mod:`lit_dlrm.sparsity.quantize`);
* ``activation``: fraction of the interaction output ``z`` zeroed per row (smallest ``|z|``)
  before the top MLP (:func:`lit_dlrm.model.sparsify_activations`);
* ``finetune_steps``: training steps after pruning, masks held fixed
  (:mod:`lit_dlrm.sparsity.finetune`).

`make_grid` takes the product of its options, plus one product per entry of ``studies``
(:class:`Study`: any option left unset is the main grid's). That keeps the default sweep the
reference's 80 points and adds each follow-up only where it is informative. It validates every
option before any work starts and raises a `ValueError` that names the option (`sweep.levels`,
`sweep.studies[2].weight_bits`, ...) and what was expected.

Which points share a mask
-------------------------
`GridPoint.mask_key` is equal for two points only when their masks are identical for *every*
table, whatever its values:

* level 0.0 keeps everything (``round(0 * n) == 0`` blocks pruned) for any norm, block shape
  and threshold;
* level 1.0 prunes everything (``round(1 * n) == n``) for any norm, block shape and threshold.

Two points are tested once when their masks and their other dimensions agree
(`GridPoint.test_key_for`).

L1 versus L2 with (1, 1) blocks is *not* merged by `mask_key`. The benchmark skips L2 (1, 1)
claiming |w| and w^2 rank the same; in exact arithmetic they do, but in float32 squaring can
create ties that |w| does not have, and ties are broken by position, so masks can differ:

* tiny |w| (below about 2**-75) square to +0.0, and 2**-75 <= |w| < 2**-63 square to subnormals
  with fewer significant bits than w, so distinct tiny |w| can share one w^2;
* every |w| >= 2**64 squares to +inf.

In between, squaring is strictly increasing in float32. For |w| in [2**e, 2**(e+1)) with
u = ulp(w) = 2**(e-23), the exact squares of neighbours differ by 2|w|u + u^2 > 2**(2e-22), and
every w^2 there (in [2**2e, 2**(2e+2))) has ulp <= 2**(2e-22); rounding moves each end by at most
half an ulp, so the rounded squares stay distinct and ordered. Checked exhaustively too: all
1.07e9 float32 values in [2**-63, 2**64) square to a strictly increasing sequence (a 6 s one-off;
`tests/test_sparsity_grid.py` re-checks the two end binades). So for a table whose nonzero magnitudes all lie in
[2**-63, 2**64) the two rankings are the same and, because our tie-break (and torch.sort's, which
is comparison based) only sees comparison results, so are the masks. That is a property of the
data, so it lives in `GridPoint.mask_key_for(squares_keep_order)`, which merges L2 (1, 1) into L1 (1, 1)
only after `squares_preserve_order` has checked every table.

Block shapes
------------
Block shapes are (height, width) with both >= 1. Height > 1 is supported by `masks.py` (blocks
then span consecutive rows, as in `DataNormSparsifier`); `make_grid` checks width against the
embedding dimension and height against the smallest table when those are given, because
`avg_pool2d` cannot pool a window larger than the table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

NORMS: tuple[str, ...] = ("L1", "L2")
DEFAULT_BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (1, 4))


def default_levels() -> tuple[float, ...]:
    """The 20 benchmark levels 0.0, 0.1, ..., 0.9, 0.91, ..., 0.99, 1.0, free of float drift."""
    coarse = [round(i / 10, 1) for i in range(10)]  # 0.0 .. 0.9
    fine = [round(i / 100, 2) for i in range(91, 100)]  # 0.91 .. 0.99
    return tuple(coarse + fine + [1.0])


DEFAULT_LEVELS: tuple[float, ...] = default_levels()


THRESHOLDS: tuple[str, ...] = ("per_table", "global")
WEIGHT_BITS: tuple[int, ...] = (32, 8, 4)


@dataclass(frozen=True, order=True)
class GridPoint:
    """One sweep point: prune every table with this norm, block shape and level (and, past the
    reference, threshold scope, weight bits, activation sparsity and fine-tuning steps)."""

    norm: str
    block_shape: tuple[int, int]
    level: float
    threshold: str = "per_table"
    weight_bits: int = 32
    activation: float = 0.0
    finetune_steps: int = 0

    @property
    def key(self) -> str:
        """Stable, file-name-safe identifier, e.g. ``L1_1x4_0.91`` or ``L2_1x4_0.9_global_int8``."""
        bh, bw = self.block_shape
        return f"{self.norm}_{bh}x{bw}_{self.level:g}{self._mask_suffix}{self._model_suffix}"

    @property
    def _mask_suffix(self) -> str:
        return "_global" if self.threshold == "global" else ""

    @property
    def _model_suffix(self) -> str:
        """The dimensions that change the model but not the mask."""
        parts = []
        if self.weight_bits != 32:
            parts.append(f"_int{self.weight_bits}")
        if self.activation:
            parts.append(f"_act{self.activation:g}")
        if self.finetune_steps:
            parts.append(f"_ft{self.finetune_steps}")
        return "".join(parts)

    @property
    def block_shape_str(self) -> str:
        """The block shape written like the reference CSVs: ``(1, 4)``."""
        return str(tuple(self.block_shape))

    @property
    def mask_key(self) -> str:
        """Equal for points whose masks are identical on any data (see the module docstring)."""
        if self.level <= 0.0:
            return "keep_all"
        if self.level >= 1.0:
            return "prune_all"
        bh, bw = self.block_shape
        return f"{self.norm}_{bh}x{bw}_{self.level:g}{self._mask_suffix}"

    def mask_key_for(self, squares_keep_order: bool) -> str:
        """`mask_key`, also merging L2 (1, 1) into L1 (1, 1) when the tables allow it.

        The merge is exact only when every nonzero |w| is in [2**-63, 2**64) (squaring is then
        strictly increasing, over all tables together too): pass `squares_preserve_order(tables)`,
        computed once per model.
        """
        base = self.mask_key
        if base in ("keep_all", "prune_all") or self.norm != "L2" or self.block_shape != (1, 1):
            return base
        if squares_keep_order:
            return GridPoint("L1", self.block_shape, self.level, self.threshold).mask_key
        return base

    def test_key_for(self, squares_keep_order: bool) -> str:
        """Equal for points whose tests give the same results: same mask, same other dimensions."""
        return self.mask_key_for(squares_keep_order) + self._model_suffix


@dataclass(frozen=True)
class Study:
    """Extra points for the grid: the product of these options, each unset one (None) taken from
    the main grid (see :func:`make_grid`)."""

    levels: list[float] | None = None
    block_shapes: list[list[int]] | None = None
    norms: list[str] | None = None
    thresholds: list[str] | None = None
    weight_bits: list[int] | None = None
    activation_levels: list[float] | None = None
    finetune_steps: list[int] | None = None


# float32 bounds inside which w -> w*w is strictly increasing on |w| (module docstring).
_SQUARE_SAFE_MIN = 2.0**-63
_SQUARE_SAFE_MAX = 2.0**64


def squares_preserve_order(weights: Iterable[torch.Tensor], chunk_elems: int = 1 << 22) -> bool:
    """True when every table's nonzero |w| lies in [2**-63, 2**64) and no value is NaN.

    Only float32 tables qualify (other dtypes have other bounds). Chunked: no table-sized
    temporaries.
    """
    for w in weights:
        if w.dtype != torch.float32:
            return False
        flat = w.detach().reshape(-1)
        for start in range(0, flat.numel(), chunk_elems):
            a = flat[start : start + chunk_elems].abs()
            if torch.isnan(a).any():
                return False
            if (a >= _SQUARE_SAFE_MAX).any():
                return False
            if ((a < _SQUARE_SAFE_MIN) & (a != 0)).any():
                return False
    return True


def _check_levels(levels: Sequence[float], option: str = "sweep.levels") -> tuple[float, ...]:
    out = []
    if len(levels) == 0:
        raise ValueError(f"{option}: empty list (expected at least one level in [0, 1])")
    for lv in levels:
        if isinstance(lv, bool) or not isinstance(lv, (int, float)):
            raise ValueError(f"{option}: {lv!r} is not a number (expected a float in [0, 1])")
        lv = float(lv)
        if math.isnan(lv) or not 0.0 <= lv <= 1.0:
            raise ValueError(f"{option}: {lv} is outside [0, 1]")
        out.append(lv)
    return _unique(out, option)


def _unique(values: list, option: str) -> tuple:
    if len(set(values)) != len(values):
        dup = sorted({x for x in values if values.count(x) > 1})
        raise ValueError(f"{option}: duplicate values {dup} (expected each once)")
    return tuple(values)


def _check_choices(values: Sequence, choices: Sequence, option: str) -> tuple:
    if len(values) == 0:
        raise ValueError(f"{option}: empty list (expected some of {list(choices)})")
    for v in values:
        if v not in choices or isinstance(v, bool):
            raise ValueError(f"{option}: unknown value {v!r} (expected some of {list(choices)})")
    return _unique(list(values), option)


def _check_steps(steps: Sequence[int], option: str) -> tuple[int, ...]:
    if len(steps) == 0:
        raise ValueError(f"{option}: empty list (expected step counts >= 0, e.g. [0, 200])")
    for n in steps:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{option}: {n!r} is not a step count (expected an integer >= 0)")
    return _unique(list(steps), option)


def _check_block_shapes(
    block_shapes: Sequence[Sequence[int]],
    embedding_dim: int | None,
    min_rows: int | None,
    option: str = "sweep.block_shapes",
) -> tuple[tuple[int, int], ...]:
    if len(block_shapes) == 0:
        raise ValueError(f"{option}: empty list (expected e.g. [[1, 1], [1, 4]])")
    out = []
    for bs in block_shapes:
        shape = tuple(bs) if isinstance(bs, (list, tuple)) else (bs,)
        if len(shape) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in shape
        ):
            raise ValueError(f"{option}: {bs!r} is not a (height, width) pair of integers")
        bh, bw = shape
        if bh < 1 or bw < 1:
            raise ValueError(f"{option}: {shape} has a side < 1 (expected height >= 1, width >= 1)")
        if embedding_dim is not None and bw > embedding_dim:
            raise ValueError(
                f"{option}: {shape} is wider than the embedding dimension "
                f"{embedding_dim} (expected width <= {embedding_dim})"
            )
        if min_rows is not None and bh > min_rows:
            raise ValueError(
                f"{option}: {shape} is taller than the smallest table ({min_rows} rows)"
                f" (expected height <= {min_rows})"
            )
        out.append((bh, bw))
    if len(set(out)) != len(out):
        raise ValueError(f"{option}: duplicate block shapes in {out}")
    return tuple(out)


def make_grid(
    levels: Sequence[float] = DEFAULT_LEVELS,
    block_shapes: Sequence[Sequence[int]] = DEFAULT_BLOCK_SHAPES,
    norms: Sequence[str] = NORMS,
    thresholds: Sequence[str] = ("per_table",),
    weight_bits: Sequence[int] = (32,),
    activation_levels: Sequence[float] = (0.0,),
    finetune_steps: Sequence[int] = (0,),
    studies: Sequence[
        dict
    ] = (),  # of Study fields; plain dicts so a CLI list replaces the config's
    *,
    embedding_dim: int | None = None,
    min_rows: int | None = None,
) -> list[GridPoint]:
    """Validate the sweep options and return the points: the product of the options, then the
    product of each study's (each ordered norm, block shape, threshold, bits, activation,
    fine-tuning, level), without repeats.

    `embedding_dim` (table width) and `min_rows` (rows of the smallest table), when given, are
    checked against every block shape. Raises ValueError naming the offending option.
    """
    main = dict(
        levels=levels,
        block_shapes=block_shapes,
        norms=norms,
        thresholds=thresholds,
        weight_bits=weight_bits,
        activation_levels=activation_levels,
        finetune_steps=finetune_steps,
    )
    products = [("sweep", main)]
    for i, study in enumerate(studies):
        if isinstance(study, dict):
            unknown = set(study) - set(main)
            if unknown:
                raise ValueError(
                    f"sweep.studies[{i}]: unknown options {sorted(unknown)} (expected some of {list(main)})"
                )
            study = Study(**study)
        overrides = {k: v for k, v in vars(study).items() if v is not None}
        products.append((f"sweep.studies[{i}]", {**main, **overrides}))
    points: dict[GridPoint, None] = {}
    for prefix, o in products:
        lv = _check_levels(o["levels"], f"{prefix}.levels")
        ns = _check_choices(o["norms"], NORMS, f"{prefix}.norms")
        bss = _check_block_shapes(
            o["block_shapes"], embedding_dim, min_rows, f"{prefix}.block_shapes"
        )
        ths = _check_choices(o["thresholds"], THRESHOLDS, f"{prefix}.thresholds")
        bits = _check_choices(o["weight_bits"], WEIGHT_BITS, f"{prefix}.weight_bits")
        acts = _check_levels(o["activation_levels"], f"{prefix}.activation_levels")
        fts = _check_steps(o["finetune_steps"], f"{prefix}.finetune_steps")
        for n, bs, th, b, a, ft, level in itertools.product(ns, bss, ths, bits, acts, fts, lv):
            points.setdefault(GridPoint(n, bs, level, th, b, a, ft))
    return list(points)


def default_grid() -> list[GridPoint]:
    """The benchmark's 80 points (2 norms x 2 block shapes x 20 levels)."""
    return make_grid()
