"""Mask parity with torch's DataNormSparsifier, and prune()/prune_tables() contracts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier
from torch.nn import functional as F

from lit_dlrm.sparsity.masks import keep_mask, prune, prune_tables
from lit_dlrm.sweep.grid import GridPoint

LEVELS = [0.0, 0.1, 0.5, 0.91, 0.99, 1.0]


def reference_mask(w: torch.Tensor, level, block_shape, norm) -> torch.Tensor:
    sp = DataNormSparsifier(sparsity_level=level, sparse_block_shape=block_shape, norm=norm)
    sp.add_data("t", torch.nn.Parameter(w.clone()))
    sp.step()
    return sp.get_mask("t").bool()


def reference_prune(w: torch.Tensor, level, block_shape, norm) -> torch.Tensor:
    sp = DataNormSparsifier(sparsity_level=level, sparse_block_shape=block_shape, norm=norm)
    sp.add_data("t", torch.nn.Parameter(w.clone()))
    sp.step()
    sp.squash_mask()
    return sp.get_data("t", return_original=False).detach()


def block_scores(w, block_shape, norm):
    s = w.abs() if norm == "L1" else w * w
    return F.avg_pool2d(s[None, None], block_shape, block_shape, ceil_mode=True)[0, 0]


def assert_same_up_to_boundary_ties(ours, ref, w, level, block_shape, norm):
    """Same number of pruned blocks; any difference only among blocks tied at the cut."""
    bh, bw = block_shape
    pooled = lambda m: F.max_pool2d(
        (~m).float()[None, None],
        block_shape,
        block_shape,  # noqa: E731
        ceil_mode=True,
    )[0, 0].bool()  # block pruned?
    p_ours, p_ref = pooled(ours), pooled(ref)
    assert int(p_ours.sum()) == int(p_ref.sum())
    # whole blocks only
    assert torch.equal(
        ours, ~p_ours.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[: w.shape[0], : w.shape[1]]
    )
    diff = p_ours != p_ref
    if diff.any():
        s = block_scores(w, block_shape, norm)
        t = s[p_ref].max()  # the cut: the largest pruned score
        assert bool((s[diff] == t).all())


def tables():
    g = torch.Generator().manual_seed(0)
    yield "randn16", torch.randn(257, 16, generator=g)
    yield "randn10", torch.randn(123, 10, generator=g)  # width not divisible by 4
    yield "ties", torch.randint(-1, 2, (300, 16), generator=g).float() * 0.5
    yield "ties10", torch.randint(-1, 2, (101, 10), generator=g).float() * 0.5
    yield "dup_rows", torch.randn(40, 16, generator=g).repeat(5, 1)
    yield "one_row", torch.randn(1, 16, generator=g)
    yield "tiny", torch.randn(64, 16, generator=g) * 1e-30  # L2 squares underflow to 0


@pytest.mark.parametrize("name, w", list(tables()))
@pytest.mark.parametrize("block_shape", [(1, 1), (1, 4)])
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_parity_with_data_norm_sparsifier(name, w, block_shape, norm):
    for level in LEVELS:
        ref = reference_mask(w, level, block_shape, norm)
        # exact reproduction of the reference, ties included
        assert torch.equal(
            keep_mask(w, level, block_shape, norm, ties="torch", chunk_elems=64), ref
        )
        ours = keep_mask(w, level, block_shape, norm, chunk_elems=64)
        assert ours.dtype == torch.bool and ours.shape == w.shape
        assert_same_up_to_boundary_ties(ours, ref, w, level, block_shape, norm)
        if name.startswith("randn"):  # distinct floats: no ties, identical masks
            assert torch.equal(ours, ref)


def test_taller_blocks_and_odd_widths():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(37, 7, generator=g)
    for bs in [(2, 2), (3, 4), (1, 3)]:
        for level in [0.1, 0.5, 0.99]:
            ref = reference_mask(w, level, bs, "L2")
            assert torch.equal(keep_mask(w, level, bs, "L2", chunk_elems=50), ref)


def test_stable_ties_prune_lowest_index_first():
    w = torch.full((10, 4), 0.5)
    m = keep_mask(w, 0.3, (1, 1), "L1")
    flat = m.reshape(-1)
    assert not flat[:12].any() and flat[12:].all()


def test_chunking_does_not_change_the_mask():
    w = torch.randint(-3, 4, (999, 16)).float()
    for bs in [(1, 1), (1, 4), (2, 4)]:
        a = keep_mask(w, 0.37, bs, "L2", chunk_elems=1 << 20)
        b = keep_mask(w, 0.37, bs, "L2", chunk_elems=48)
        assert torch.equal(a, b)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 60),
    dim=st.integers(2, 20),
    bw=st.integers(1, 5),
    level=st.floats(0.0, 1.0),
    norm=st.sampled_from(["L1", "L2"]),
    tied=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_parity_property(rows, dim, bw, level, norm, tied, seed):
    bw = min(bw, dim)
    g = torch.Generator().manual_seed(seed)
    w = (
        torch.randint(-2, 3, (rows, dim), generator=g).float()
        if tied
        else torch.randn(rows, dim, generator=g)
    )
    ref = reference_mask(w, level, (1, bw), norm)
    assert torch.equal(keep_mask(w, level, (1, bw), norm, ties="torch", chunk_elems=32), ref)
    assert_same_up_to_boundary_ties(
        keep_mask(w, level, (1, bw), norm, chunk_elems=32), ref, w, level, (1, bw), norm
    )


def test_prune_leaves_original_and_signs_zeros_like_reference():
    w = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    before = w.clone()
    for bs in [(1, 1), (1, 4)]:
        for level in [0.0, 0.5, 1.0]:
            plain = prune(w, level, bs, "L1")
            signed = prune(w, level, bs, "L1", signed_zeros=True)
            assert torch.equal(w.view(torch.int32), before.view(torch.int32))  # untouched
            assert plain.data_ptr() != w.data_ptr()
            ref = reference_prune(w, level, bs, "L1")
            assert torch.equal(signed.view(torch.int32), ref.view(torch.int32))  # bit-for-bit
            pruned = plain == 0
            assert not torch.signbit(plain[pruned]).any()  # +0.0 only
            if level > 0:
                assert torch.signbit(signed[pruned]).any()  # the reference writes -0.0
            assert torch.equal(plain, signed)  # numerically equal


def test_prune_tables_matches_per_table():
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(n, 16, generator=g) for n in (5, 300, 1, 77)]
    p = GridPoint("L2", (1, 4), 0.91)
    out = prune_tables(ws, p)
    assert len(out) == len(ws)
    for w, o in zip(ws, out):
        assert torch.equal(o, prune(w, p.sparsity_level, p.sparse_block_shape, p.norm))


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(4, 4), 1.5, (1, 1), "L1"), "level: 1.5 is outside [0, 1]"),
        ((torch.zeros(4, 4), 0.5, (1, 8), "L1"), "block_shape: (1, 8) does not fit"),
        ((torch.zeros(4, 4), 0.5, (1, 1), "L3"), "norm: unknown norm 'L3'"),
        ((torch.zeros(4), 0.5, (1, 1), "L1"), "expected a 2-D table"),
    ],
)
def test_keep_mask_argument_errors(args, message):
    with pytest.raises(ValueError) as err:
        keep_mask(*args)
    assert message in str(err.value)


def test_l1_l2_singletons_same_on_safe_data_but_not_on_tiny_values():
    g = torch.Generator().manual_seed(4)
    safe = torch.randint(-3, 4, (100, 16), generator=g).float() * 0.25  # many ties, all safe
    for level in [0.1, 0.5, 0.91]:
        assert torch.equal(
            reference_mask(safe, level, (1, 1), "L1"), reference_mask(safe, level, (1, 1), "L2")
        )
        assert torch.equal(
            keep_mask(safe, level, (1, 1), "L1"), keep_mask(safe, level, (1, 1), "L2")
        )
    # distinct |w| below 2**-75 all square to +0.0: L2 ties them, L1 does not
    tiny = torch.tensor([[3e-30, 1e-30, 2e-30, 1.0]])
    assert not torch.equal(keep_mask(tiny, 0.25, (1, 1), "L1"), keep_mask(tiny, 0.25, (1, 1), "L2"))
    assert not torch.equal(
        reference_mask(tiny, 0.25, (1, 1), "L1"), reference_mask(tiny, 0.25, (1, 1), "L2")
    )
