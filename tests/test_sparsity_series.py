"""Series-shared cuts, apply and in-place pruning: bit-identical to the oracle and the reference."""

import pruning_oracle as oracle
import pytest
import torch
from test_sparsity_masks import reference_prune
from torch.nn import functional as F

from lit_dlrm.sparsity.prune import (
    StaleCut,
    apply_cuts,
    block_scores,
    cuts_for_levels,
    prune,
    sums_ok,
)
from lit_dlrm.sweep.grid import DEFAULT_LEVELS, GridPoint


def tables():
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(1, 16, generator=g),
        torch.randn(300, 16, generator=g),
        torch.randint(-2, 3, (500, 16), generator=g).float() * 0.5,  # tie groups at every cut
        torch.rand(700, 16, generator=g) - 0.5,
        torch.randn(77, 12, generator=g) * 1e-30,  # L2 scores underflow: ties
    ]


def bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("block_shape", [(1, 1), (1, 4), (2, 4), (1, 5)])
def test_series_and_in_place_match_prune_bit_for_bit(norm, block_shape):
    ws = [w for w in tables() if w.shape[0] >= block_shape[0] and w.shape[1] >= block_shape[1]]
    series = cuts_for_levels(ws, norm, block_shape, DEFAULT_LEVELS, chunk_elems=160)
    for level in DEFAULT_LEVELS[::3] + (0.99, 1.0):
        for signed in (False, True):
            want = [oracle.prune(w, level, block_shape, norm, signed) for w in ws]
            out = [torch.full_like(w, 7.0) for w in ws]
            apply_cuts(
                ws,
                series.for_level(level),
                norm,
                block_shape,
                out=out,
                signed_zeros=signed,
                chunk_elems=160,
            )
            inplace = [w.clone() for w in ws]
            prune(inplace, norm, block_shape, level, signed_zeros=signed, chunk_elems=160)
            for a, b, c in zip(want, out, inplace):
                assert torch.equal(bits(a), bits(b)) and torch.equal(bits(a), bits(c))


def test_in_place_matches_the_reference_squash_and_keeps_storage():
    w = torch.randn(400, 16, generator=torch.Generator().manual_seed(5))
    for bs in [(1, 1), (1, 4)]:
        for level in [0.3, 0.91]:
            t = w.clone()
            ptr = t.data_ptr()
            prune([t], "L2", bs, level, signed_zeros=True)
            assert t.data_ptr() == ptr
            assert torch.equal(bits(t), bits(reference_prune(w, level, bs, "L2")))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    w = torch.randn(100, 8, dtype=dtype)
    t = w.clone()
    prune([t], "L1", (1, 4), 0.5)
    assert torch.equal(t, oracle.prune(w, 0.5, (1, 4), "L1"))
    series = cuts_for_levels([w], "L1", (1, 4), [0.5])
    out = [torch.empty_like(w)]
    apply_cuts([w], series.for_level(0.5), "L1", (1, 4), out=out)
    assert torch.equal(out[0], t)


def test_stale_cut_is_detected_not_applied_silently():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(200, 16, generator=g)
    series = cuts_for_levels([w], "L1", (1, 1), [0.5])
    changed = w * 3 + 1
    with pytest.raises(StaleCut):
        apply_cuts([changed], series.for_level(0.5), "L1", (1, 1), out=[torch.empty_like(w)])
    # a cut reused on the same tables stays exact
    for _ in range(2):
        out = [torch.empty_like(w)]
        apply_cuts([w], series.for_level(0.5), "L1", (1, 1), out=out)
        assert torch.equal(out[0], oracle.prune(w, 0.5, (1, 1), "L1"))


def test_block_sum_order_is_avg_pool2d_bit_for_bit():
    assert sums_ok()
    g = torch.Generator().manual_seed(8)
    s = (
        torch.randn(5000, 16, generator=g) * torch.exp(torch.randn(5000, 16, generator=g) * 10)
    ).abs()
    ref = F.avg_pool2d(s[None, None], (1, 4), (1, 4), ceil_mode=True)[0, 0]
    assert torch.equal(bits(block_scores(s, "L1", (1, 4))), bits(ref.contiguous()))


def test_sparsify_callback_shares_series_cuts_and_survives_changed_tables():
    from callbacks.sparsification import Sparsify
    from lit_dlrm.sweep.context import SweepContext

    g = torch.Generator().manual_seed(9)
    dense = [torch.randn(n, 8, generator=g) for n in (50, 300)]
    cb = Sparsify()
    plan = [GridPoint("L1", (1, 4), 0.9), GridPoint("L2", (1, 1), 0.5)]
    cb.bind(SweepContext(GridPoint("L1", (1, 4), 0.5), plan))
    first = cb._prune(dense)
    _, series = cb._series
    assert set(series.cuts) == {0.5, 0.9}
    cb._buffers = first
    cb.bind(SweepContext(plan[0], plan[1:]))
    second = cb._prune(dense)
    assert cb._series[1] is series and second[0].data_ptr() == first[0].data_ptr()  # reused
    want = [oracle.prune(w, 0.9, (1, 4), "L1") for w in dense]
    assert all(torch.equal(a, b) for a, b in zip(second, want))
    dense[1].mul_(-2).add_(0.3)  # the tables change under the cache: recomputed, still exact
    third = cb._prune(dense)
    want = [oracle.prune(w, 0.9, (1, 4), "L1") for w in dense]
    assert all(torch.equal(a, b) for a, b in zip(third, want))
