"""The sweep grid: `GridPoint` (one point and its CSV schema) and `make_grid` (validated points).

A point's fields are its CSV columns, named as the reference names them (``norm``,
``sparse_block_shape``, ``sparsity_level``), then four further dimensions whose defaults are what
the reference does (``threshold``, ``weight_bits``, ``activation_sparsity``, ``finetune_steps``).
The grid's options carry the same names, each a list of the values its column takes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace

import torch

NORMS: tuple[str, ...] = ("L1", "L2")
THRESHOLDS: tuple[str, ...] = ("per_table", "global")
WEIGHT_BITS: tuple[int, ...] = (32, 8, 4)
DEFAULT_BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (1, 4))
# The benchmark's 20 levels 0.0, 0.1, ..., 0.9, 0.91, ..., 0.99, 1.0, free of float drift.
DEFAULT_LEVELS: tuple[float, ...] = (
    *(round(i / 10, 1) for i in range(10)),
    *(round(i / 100, 2) for i in range(91, 100)),
    1.0,
)


@dataclass(frozen=True, order=True)
class GridPoint:
    """One sweep point: prune every table with this norm, block shape (height, width) and level
    (fraction of blocks zeroed), with the further dimensions past the reference.

    The fields are the point's CSV columns, in order (`row`, `from_row`, `COLUMNS`).
    """

    norm: str
    sparse_block_shape: tuple[int, int]
    sparsity_level: float
    threshold: str = "per_table"
    weight_bits: int = 32
    activation_sparsity: float = 0.0
    finetune_steps: int = 0

    @property
    def row(self) -> dict:
        """The point's CSV columns; the block shape written as the reference does: ``"(1, 4)"``."""
        return {**asdict(self), "sparse_block_shape": str(tuple(self.sparse_block_shape))}

    @classmethod
    def from_row(cls, row) -> GridPoint:
        """The point of a CSV row (any mapping holding `COLUMNS`): the inverse of `row`."""
        shape = tuple(int(x) for x in str(row["sparse_block_shape"]).strip("()").split(","))
        return cls(
            str(row["norm"]),
            shape,
            float(row["sparsity_level"]),
            str(row["threshold"]),
            int(row["weight_bits"]),
            float(row["activation_sparsity"]),
            int(row["finetune_steps"]),
        )

    @property
    def key(self) -> str:
        """File-name-safe identity, e.g. ``L1_1x4_0.91`` or ``L2_1x4_0.9_global_int8``."""
        if self == DENSE:
            return "dense"
        bh, bw = self.sparse_block_shape
        return f"{self.norm}_{bh}x{bw}_{self.sparsity_level:g}{self._mask_suffix}{self._suffix}"

    @property
    def series(self) -> str:
        """The series (TensorBoard run, plot line) the point belongs to: its key without the level,
        e.g. ``L1_1x4`` or ``L2_1x4_global_int8``."""
        bh, bw = self.sparse_block_shape
        return f"{self.norm}_{bh}x{bw}{self._mask_suffix}{self._suffix}"

    @property
    def varied(self) -> list[str]:
        """The further dimensions this point sets away from the reference's value."""
        return [name for name, value in DEFAULTS.items() if getattr(self, name) != value]

    @property
    def _mask_suffix(self) -> str:
        return "_global" if self.threshold == "global" else ""

    @property
    def _suffix(self) -> str:
        """The dimensions that change the model but not the mask."""
        bits = f"_int{self.weight_bits}" if self.weight_bits != 32 else ""
        act = f"_act{self.activation_sparsity:g}" if self.activation_sparsity else ""
        ft = f"_ft{self.finetune_steps}" if self.finetune_steps else ""
        return bits + act + ft

    @property
    def mask_key(self) -> str:
        """Equal for points whose masks are identical on any tables (level 0 or 1: whatever the
        norm, block shape and threshold)."""
        if self.sparsity_level <= 0.0:
            return "keep_all"
        if self.sparsity_level >= 1.0:
            return "prune_all"
        bh, bw = self.sparse_block_shape
        return f"{self.norm}_{bh}x{bw}_{self.sparsity_level:g}{self._mask_suffix}"

    def mask_key_for(self, squares_keep_order: bool) -> str:
        """`mask_key`, also merging L2 (1, 1) into L1 (1, 1) when `squares_keep_order` (pass
        `squares_preserve_order(tables)`, computed once per model)."""
        if squares_keep_order and self.norm == "L2" and self.sparse_block_shape == (1, 1):
            return replace(self, norm="L1").mask_key
        return self.mask_key

    def test_key_for(self, squares_keep_order: bool) -> str:
        """Equal for points whose tests give the same results: same mask, same other dimensions."""
        return self.mask_key_for(squares_keep_order) + self._suffix


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(GridPoint))
# The further dimensions and the value meaning "as the reference does".
DEFAULTS: dict = {f.name: f.default for f in fields(GridPoint) if f.default is not MISSING}
# The row of an unpruned model (a callback measuring the model as it is).
DENSE = GridPoint("dense", (1, 1), 0.0)


# float32 bounds inside which w -> w*w is strictly increasing on |w| (docs/design.md).
SQUARE_SAFE_MIN = 2.0**-63
SQUARE_SAFE_MAX = 2.0**64


def squares_preserve_order(weights: Iterable[torch.Tensor], chunk_elems: int = 1 << 22) -> bool:
    """True when every table is float32, holds no NaN, and its nonzero |w| lie in [2**-63, 2**64):
    then w^2 ranks the values as |w| does. Chunked: no table-sized temporaries."""
    for w in weights:
        if w.dtype != torch.float32:
            return False
        flat = w.detach().reshape(-1)
        for start in range(0, flat.numel(), chunk_elems):
            a = flat[start : start + chunk_elems].abs()
            if torch.isnan(a).any() or (a >= SQUARE_SAFE_MAX).any():
                return False
            if ((a < SQUARE_SAFE_MIN) & (a != 0)).any():
                return False
    return True


def _unique(values: list, option: str) -> tuple:
    if len(set(values)) != len(values):
        dup = sorted({x for x in values if values.count(x) > 1})
        raise ValueError(f"{option}: duplicate values {dup} (expected each once)")
    return tuple(values)


def _check_levels(levels: Sequence[float], option: str) -> tuple[float, ...]:
    if len(levels) == 0:
        raise ValueError(f"{option}: empty list (expected at least one level in [0, 1])")
    out = []
    for lv in levels:
        if isinstance(lv, bool) or not isinstance(lv, (int, float)):
            raise ValueError(f"{option}: {lv!r} is not a number (expected a float in [0, 1])")
        if math.isnan(lv) or not 0.0 <= lv <= 1.0:
            raise ValueError(f"{option}: {float(lv)} is outside [0, 1]")
        out.append(float(lv))
    return _unique(out, option)


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
    option: str,
    embedding_dim: int | None,
    min_rows: int | None,
) -> tuple[tuple[int, int], ...]:
    if len(block_shapes) == 0:
        raise ValueError(f"{option}: empty list (expected e.g. [[1, 1], [1, 4]])")
    out = []
    for bs in block_shapes:
        shape = tuple(bs) if isinstance(bs, (list, tuple)) else (bs,)
        if len(shape) != 2 or not all(type(x) is int for x in shape):
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


# The grid's order: level innermost, so that a series' points follow each other.
ORDER = (
    "norm",
    "sparse_block_shape",
    "threshold",
    "weight_bits",
    "activation_sparsity",
    "finetune_steps",
    "sparsity_level",
)


def make_grid(
    sparsity_level: Sequence[float] = DEFAULT_LEVELS,
    sparse_block_shape: Sequence[Sequence[int]] = DEFAULT_BLOCK_SHAPES,
    norm: Sequence[str] = NORMS,
    threshold: Sequence[str] = ("per_table",),
    weight_bits: Sequence[int] = (32,),
    activation_sparsity: Sequence[float] = (0.0,),
    finetune_steps: Sequence[int] = (0,),
    studies: Sequence[dict] = (),
    *,
    embedding_dim: int | None = None,
    min_rows: int | None = None,
) -> list[GridPoint]:
    """The grid's points: the product of the options (each the list of values of the GridPoint
    field it names), then the product of each study's, in `ORDER`, without repeats. A study is a
    dict of some of these options; the others are the main grid's.

    `embedding_dim` (table width) and `min_rows` (rows of the smallest table), when given, bound
    every block shape. Raises ValueError naming the option (``sweep.sparsity_level``,
    ``sweep.studies[2].weight_bits``, ...) and what was expected, before any point is made.
    """
    main = dict(
        sparsity_level=sparsity_level,
        sparse_block_shape=sparse_block_shape,
        norm=norm,
        threshold=threshold,
        weight_bits=weight_bits,
        activation_sparsity=activation_sparsity,
        finetune_steps=finetune_steps,
    )
    checks = {
        "sparsity_level": _check_levels,
        "norm": lambda v, o: _check_choices(v, NORMS, o),
        "sparse_block_shape": lambda v, o: _check_block_shapes(v, o, embedding_dim, min_rows),
        "threshold": lambda v, o: _check_choices(v, THRESHOLDS, o),
        "weight_bits": lambda v, o: _check_choices(v, WEIGHT_BITS, o),
        "activation_sparsity": _check_levels,
        "finetune_steps": _check_steps,
    }
    products = [("sweep", main)]
    for i, study in enumerate(studies):
        unknown = set(study) - set(main)
        if unknown:
            raise ValueError(
                f"sweep.studies[{i}]: unknown options {sorted(unknown)}"
                f" (expected some of {list(main)})"
            )
        overrides = {k: v for k, v in study.items() if v is not None}
        products.append((f"sweep.studies[{i}]", {**main, **overrides}))
    points: dict[GridPoint, None] = {}
    for prefix, options in products:
        values = {name: check(options[name], f"{prefix}.{name}") for name, check in checks.items()}
        for combination in itertools.product(*(values[name] for name in ORDER)):
            points.setdefault(GridPoint(**dict(zip(ORDER, combination))))
    return list(points)


def default_grid() -> list[GridPoint]:
    """The benchmark's 80 points (2 norms x 2 block shapes x 20 levels)."""
    return make_grid()
