"""Global threshold: the K lowest blocks of all tables together, against the oracle's sort."""

import pytest
import torch
from pruning_oracle import global_prune

from lit_dlrm.sparsity.global_threshold import global_counts, global_cuts
from lit_dlrm.sparsity.prune import StaleCut, apply_cuts, cuts_for_counts, cuts_for_levels

LEVELS = [0.0, 0.37, 0.9, 1.0]


def tables(kind="mixed"):
    """Different sizes, widths and scales; "ties": few distinct values, so cuts split tie groups
    inside and across tables (the same values reappear in a later table)."""
    g = torch.Generator().manual_seed(0)
    dup = torch.randint(-3, 4, (90, 16), generator=g).float() * 0.25
    if kind == "ties":
        return [
            dup,
            torch.randint(-2, 3, (123, 16), generator=g).float() * 0.125,
            dup[:50].clone(),
            torch.randint(-1, 2, (64, 12), generator=g).float() * 0.5,
        ]
    return [
        torch.randn(300, 16, generator=g) * 0.01,
        dup,
        torch.rand(1, 16, generator=g) - 0.5,
        dup[:50].clone(),
        torch.randn(700, 16, generator=g) * 3.0,
        torch.randint(-2, 3, (123, 12), generator=g).float() * 0.01,
    ]


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("block_shape", [(1, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("kind", ["mixed", "ties"])
def test_global_cuts_match_concatenate_and_stable_sort(norm, block_shape, kind):
    ws = [w for w in tables(kind) if w.shape[0] >= block_shape[0]]
    series = global_cuts(ws, norm, block_shape, LEVELS, chunk_elems=96)  # many chunks per table
    counts = global_counts(ws, norm, block_shape, LEVELS)
    from_counts = cuts_for_counts(ws, norm, block_shape, counts, chunk_elems=96)
    for level in LEVELS:
        want, want_counts, k = global_prune(ws, level, block_shape, norm)
        assert counts[level] == want_counts and sum(counts[level]) == k
        for cuts in (series.for_level(level), from_counts.for_level(level)):
            out = [torch.full_like(w, 7.0) for w in ws]
            apply_cuts(ws, cuts, norm, block_shape, out=out, chunk_elems=96)
            for a, b in zip(out, want):
                assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_ties_across_tables_go_to_the_earlier_table():
    a = torch.full((4, 4), 0.5)
    ws = [a, a.clone(), a.clone()]  # 48 equal scores: K = 18 -> 16 from table 0, 2 from table 1
    counts = global_counts(ws, "L1", (1, 1), [0.375])
    assert counts[0.375] == [16, 2, 0]
    out = [torch.empty_like(w) for w in ws]
    apply_cuts(ws, global_cuts(ws, "L1", (1, 1), [0.375]).for_level(0.375), "L1", (1, 1), out=out)
    assert (out[0] == 0).all() and (out[2] == 0.5).all()
    assert torch.equal(out[1].reshape(-1) == 0, torch.arange(16) < 2)  # first blocks by index


def test_small_tables_lose_more_when_their_scores_are_low():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(400, 8, generator=g) * 1e-3, torch.randn(400, 8, generator=g)]
    counts = global_counts(ws, "L2", (1, 4), [0.5])[0.5]
    assert counts == [800, 0]  # the small-scale table goes first, wholly
    per_table = [c.k for c in cuts_for_levels(ws, "L2", (1, 4), [0.5]).for_level(0.5)]
    assert per_table == [400, 400]


def test_stale_global_cut_is_detected():
    ws = tables()
    cuts = global_cuts(ws, "L1", (1, 4), [0.37]).for_level(0.37)
    changed = [w * 1.5 if i == 1 else w for i, w in enumerate(ws)]  # other scores, same shapes
    changed[1][:10] = 0
    with pytest.raises(StaleCut):
        apply_cuts(changed, cuts, "L1", (1, 4), out=[torch.empty_like(w) for w in ws])


def test_bad_inputs_are_refused():
    ws = tables()
    with pytest.raises(ValueError, match=r"weights\[1\].*float32"):
        global_cuts([ws[0], ws[1].double()], "L1", (1, 4), [0.5])
    with pytest.raises(ValueError, match="level"):
        global_counts(ws, "L1", (1, 4), [1.5])
    with pytest.raises(ValueError, match=r"counts_by_level\[0.5\]\[0\]"):
        cuts_for_counts(ws, "L1", (1, 4), {0.5: [10**9] + [0] * (len(ws) - 1)})
    with pytest.raises(ValueError, match="6 tables"):
        cuts_for_counts(ws, "L1", (1, 4), {0.5: [0]})
