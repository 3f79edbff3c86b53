"""The sweep grid: default points, exact levels, validation messages, mask keys."""

import pytest
import torch

from lit_dlrm.sweep.grid import (
    COLUMNS,
    DEFAULT_LEVELS,
    DENSE,
    GridPoint,
    default_grid,
    make_grid,
    squares_preserve_order,
)


def test_default_grid_has_80_points_and_exact_levels():
    grid = default_grid()
    assert len(grid) == 80
    assert len(set(grid)) == 80
    expected = [
        0.0,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.91,
        0.92,
        0.93,
        0.94,
        0.95,
        0.96,
        0.97,
        0.98,
        0.99,
        1.0,
    ]
    assert list(DEFAULT_LEVELS) == expected  # exact float equality: no drift
    assert {p.norm for p in grid} == {"L1", "L2"}
    assert {p.sparse_block_shape for p in grid} == {(1, 1), (1, 4)}


def test_keys_are_stable_and_unique():
    p = GridPoint("L1", (1, 4), 0.91)
    assert p.key == "L1_1x4_0.91"
    assert p.row["sparse_block_shape"] == "(1, 4)"
    assert len({q.key for q in default_grid()}) == 80


def test_mask_key_merges_only_data_independent_points():
    keys = [p.mask_key for p in default_grid()]
    # 4 x 18 interior points stay distinct; all level-0 and all level-1 points merge.
    assert len(set(keys)) == 4 * 18 + 2
    assert keys.count("keep_all") == 4 and keys.count("prune_all") == 4
    assert GridPoint("L1", (1, 1), 0.5).mask_key != GridPoint("L2", (1, 1), 0.5).mask_key


def test_mask_key_for_merges_l1_l2_singletons_only_on_safe_data():
    p2 = GridPoint("L2", (1, 1), 0.5)
    p1 = GridPoint("L1", (1, 1), 0.5)
    safe = [torch.randn(20, 4), torch.zeros(3, 4)]
    assert p2.mask_key_for(squares_preserve_order(safe)) == p1.key
    tiny = [torch.tensor([[1e-30, 2e-30], [3.0, 4.0]])]  # both square to +0.0
    assert not squares_preserve_order(tiny)
    assert p2.mask_key_for(squares_preserve_order(tiny)) == p2.key
    assert not squares_preserve_order([torch.tensor([[2.0**64, 1.0]])])
    assert GridPoint("L2", (1, 4), 0.5).mask_key_for(squares_preserve_order(safe)) == "L2_1x4_0.5"


def test_squaring_strictly_increasing_at_the_safe_range_ends():
    """Exhaustive over the lowest and highest binades of [2**-63, 2**64) (docs/design.md)."""
    for lo in (2.0**-63, 2.0**63):
        start = torch.tensor(lo, dtype=torch.float32).view(torch.int32).item()
        x = torch.arange(start, start + (1 << 23), dtype=torch.int32).view(torch.float32)
        sq = x * x
        assert bool((sq[1:] > sq[:-1]).all()) and bool(torch.isfinite(sq).all())
    # and just below the range squaring does collide
    x = torch.tensor([1e-30, 2e-30])
    assert (x * x)[0] == (x * x)[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity_level=[0.5, 1.5]), "sweep.sparsity_level: 1.5 is outside [0, 1]"),
        (dict(sparsity_level=[-0.1]), "sweep.sparsity_level: -0.1 is outside [0, 1]"),
        (dict(sparsity_level=[0.5, 0.5]), "sweep.sparsity_level: duplicate"),
        (dict(sparsity_level=["a"]), "sweep.sparsity_level: 'a' is not a number"),
        (dict(sparsity_level=[]), "sweep.sparsity_level: empty"),
        (dict(norm=["L3"]), "sweep.norm: unknown value 'L3' (expected some of ['L1', 'L2'])"),
        (dict(threshold=["everywhere"]), "sweep.threshold: unknown value 'everywhere'"),
        (
            dict(weight_bits=[16]),
            "sweep.weight_bits: unknown value 16 (expected some of [32, 8, 4])",
        ),
        (dict(activation_sparsity=[1.2]), "sweep.activation_sparsity: 1.2 is outside [0, 1]"),
        (dict(finetune_steps=[-5]), "sweep.finetune_steps: -5 is not a step count"),
        (
            dict(studies=[{"sparsity_level": [0.5]}, {"weight_bits": [3]}]),
            "sweep.studies[1].weight_bits: unknown value 3",
        ),
        (dict(studies=[{"bits": [8]}]), "sweep.studies[0]: unknown options ['bits']"),
        (dict(sparse_block_shape=[(0, 4)]), "sweep.sparse_block_shape: (0, 4) has a side < 1"),
        (
            dict(sparse_block_shape=[(1, 2, 3)]),
            "sweep.sparse_block_shape: (1, 2, 3) is not a (height, width)",
        ),
        (
            dict(sparse_block_shape=[(1, 32)], embedding_dim=16),
            "wider than the embedding dimension 16",
        ),
        (dict(sparse_block_shape=[(4, 1)], min_rows=3), "taller than the smallest table (3 rows)"),
    ],
)
def test_make_grid_validation_names_the_option(kwargs, message):
    with pytest.raises(ValueError) as err:
        make_grid(**kwargs)
    assert message in str(err.value)


def test_make_grid_custom():
    g = make_grid([0.0, 0.5], [(1, 4), [2, 2]], ["L2"], embedding_dim=16, min_rows=3)
    assert [p.key for p in g] == ["L2_1x4_0", "L2_1x4_0.5", "L2_2x2_0", "L2_2x2_0.5"]


def test_studies_add_points_without_repeats():
    g = make_grid(
        [0.0, 0.9],
        [(1, 4)],
        ["L2"],
        studies=[
            {"threshold": ["global"]},
            {"weight_bits": [32, 8]},  # its 32-bit points are the main grid's: not repeated
            {"activation_sparsity": [0.5], "sparsity_level": [0.9]},
            {"finetune_steps": [100], "sparsity_level": [0.9]},
        ],
    )
    assert [p.key for p in g] == [
        "L2_1x4_0",
        "L2_1x4_0.9",
        "L2_1x4_0_global",
        "L2_1x4_0.9_global",
        "L2_1x4_0_int8",
        "L2_1x4_0.9_int8",
        "L2_1x4_0.9_act0.5",
        "L2_1x4_0.9_ft100",
    ]


def test_test_keys_merge_only_identical_tests():
    def key(**kw):
        point = {"norm": "L1", "sparse_block_shape": (1, 4), "sparsity_level": 0.5, **kw}
        return GridPoint(**point).test_key_for(True)

    # level 0 and 1: the mask does not depend on norm, block shape or threshold
    assert key(sparsity_level=0.0) == key(sparsity_level=0.0, norm="L2", threshold="global")
    assert key(sparsity_level=1.0, sparse_block_shape=(1, 1)) == key(
        sparsity_level=1.0, threshold="global"
    )
    # ... but the other dimensions change the test
    assert (
        key(sparsity_level=1.0)
        != key(sparsity_level=1.0, weight_bits=8)
        != key(sparsity_level=1.0, finetune_steps=10)
    )
    assert key(sparsity_level=0.0) != key(sparsity_level=0.0, activation_sparsity=0.5)
    # L2 (1, 1) merges into L1 (1, 1) for either threshold, never across thresholds
    assert key(norm="L2", sparse_block_shape=(1, 1), threshold="global") == key(
        sparse_block_shape=(1, 1), threshold="global"
    )
    assert key(threshold="global") != key()


def test_row_round_trips_and_names_key_and_series():
    studies = [{"threshold": ["global"], "weight_bits": [8], "activation_sparsity": [0.5]}]
    for p in make_grid(studies=[*studies, {"finetune_steps": [10]}]):
        assert list(p.row) == list(COLUMNS) and GridPoint.from_row(p.row) == p
    p = GridPoint("L2", (1, 4), 0.9, "global", 8, 0.5, 10)
    assert p.key == "L2_1x4_0.9_global_int8_act0.5_ft10"
    assert p.series == "L2_1x4_global_int8_act0.5_ft10"
    assert p.varied == ["threshold", "weight_bits", "activation_sparsity", "finetune_steps"]
    assert GridPoint("L1", (1, 1), 0.5).varied == [] and DENSE.key == "dense"
