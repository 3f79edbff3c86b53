"""CompactEmbeddingBag keeps nn.EmbeddingBag(mode="sum") semantics on pruned tables, in less."""

import csv
import math

import pytest
import torch
from pruning_oracle import prune
from torch import nn

from lit_dlrm.model import DLRM
from lit_dlrm.sparsity.compact import CompactEmbeddingBag, compact_model, coo_nbytes, table_bytes

ROWS, DIM = 300, 16
LEVELS = [0.0, 0.5, 0.9, 1.0]


def pruned_bag(level: float, bw: int, seed: int = 0) -> nn.EmbeddingBag:
    torch.manual_seed(seed)
    bag = nn.EmbeddingBag(ROWS, DIM, mode="sum")
    bag.weight.data = prune(bag.weight.data, level, (1, bw), "L1")
    return bag


def pointer_bytes(rows: int, blocks_per_row: int) -> int:
    """An int32 base per group of rows (the largest power of 2 <= 255 // blocks_per_row, so that a
    group's offsets fit uint8), a uint8 offset for each of rows + 1."""
    group = 2 ** math.floor(math.log2(255 // blocks_per_row))
    return -(-(rows + 1) // group) * 4 + (rows + 1)


def expected_nbytes(weight: torch.Tensor, bw: int) -> int:
    """Counted by hand: row pointers, a uint8 block column and bw float32 per surviving block."""
    blocks = weight.view(weight.shape[0], -1, bw)
    nnz = int(sum(bool(block.ne(0).any()) for row in blocks for block in row))
    return pointer_bytes(weight.shape[0], DIM // bw) + nnz * (1 + 4 * bw)


@pytest.mark.parametrize("bw", [1, 4])
@pytest.mark.parametrize("level", LEVELS)
def test_outputs_equal_the_dense_pruned_bag(level, bw):
    dense = pruned_bag(level, bw)
    compact = CompactEmbeddingBag(dense.weight, bw)
    g = torch.Generator().manual_seed(1)
    ids_2d = torch.randint(0, ROWS, (64, 1), generator=g)  # DLRM's case: one id per bag
    ids_3 = torch.randint(0, ROWS, (64, 3), generator=g)
    flat = torch.randint(0, ROWS, (50,), generator=g)
    offsets = torch.tensor([0, 0, 3, 3, 3, 10, 11, 30, 50, 50])  # empty bags inside and at the end
    weights = torch.rand(50, generator=g)
    with torch.no_grad():
        cases = [
            ((ids_2d,), {}),
            ((torch.tensor([[0], [ROWS - 1], [ROWS // 2]]),), {}),  # first, last and a middle row
            ((ids_2d,), {"per_sample_weights": torch.rand(64, 1, generator=g)}),
            ((ids_3,), {}),
            ((ids_3.int(),), {}),
            ((ids_3,), {"per_sample_weights": torch.rand(64, 3, generator=g)}),
            ((flat, offsets), {}),
            ((flat.int(), offsets.int()), {}),
            ((flat, offsets), {"per_sample_weights": weights}),
            ((flat[:0], torch.zeros(4, dtype=torch.long)), {}),  # only empty bags
        ]
        for args, kwargs in cases:
            want, got = dense(*args, **kwargs), compact(*args, **kwargs)
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert torch.equal(compact(ids_2d), dense(ids_2d))  # one id per bag: the very same floats
        assert not compact(flat, offsets)[[0, 2, 3, 9]].any()  # empty bags are zeros


@pytest.mark.parametrize("bw", [1, 4])
@pytest.mark.parametrize("level", LEVELS)
def test_nbytes_counts_only_the_surviving_blocks(level, bw):
    dense = pruned_bag(level, bw)
    compact = CompactEmbeddingBag(dense.weight, bw)
    assert compact.nbytes() == expected_nbytes(dense.weight.detach(), bw)
    assert (
        compact.row_base.dtype == torch.int32
        and compact.row_off.dtype == compact.cols.dtype == torch.uint8
    )
    if level == 1.0:
        assert compact.values.numel() * compact.values.element_size() == 0
        assert compact.nbytes() == pointer_bytes(ROWS, DIM // bw)
    if level >= 0.9:
        assert compact.nbytes() < 0.25 * dense.weight.numel() * 4


def test_coo_bytes_count_int64_indices_and_values():
    w = torch.zeros(10, 4)
    w[1, 2], w[7, 0], w[7, 3] = 1.0, -2.0, 3.0
    assert coo_nbytes(w) == 3 * (2 * 8 + 4)


def test_invalid_inputs_are_refused_naming_the_argument():
    compact = CompactEmbeddingBag(pruned_bag(0.5, 4).weight, 4)
    with pytest.raises(ValueError, match="block_width"):
        CompactEmbeddingBag(torch.ones(3, 6), 4)
    with pytest.raises(ValueError, match="offsets"):
        compact(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="offsets"):
        compact(torch.zeros(3, dtype=torch.long), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        compact(torch.zeros(2, 3, dtype=torch.long), per_sample_weights=torch.ones(6))


@pytest.mark.parametrize("bw", [1, 4])
def test_compact_model_has_the_dense_pruned_models_logits(bw):
    torch.manual_seed(0)
    sizes = [200, 3, 40, 500]
    model = DLRM(sizes, embedding_dim=8, bottom_mlp=[16], top_mlp=[16]).eval()
    for table, level in zip(model.emb_l, [0.9, 0.0, 1.0, 0.5]):  # one table kept dense (level 0)
        table.weight.data = prune(table.weight.data, level, (1, bw), "L2")
    compact = compact_model(model, bw)
    kinds = [type(t).__name__ for t in compact.emb_l]
    assert kinds == [
        "CompactEmbeddingBag",
        "EmbeddingBag",
        "CompactEmbeddingBag",
        "CompactEmbeddingBag",
    ]
    assert (
        compact.emb_l[1] is model.emb_l[1]
        and compact.top_l is model.top_l
        and compact.bot_l is model.bot_l
    )
    assert all(isinstance(t, nn.EmbeddingBag) for t in model.emb_l)  # the original is untouched
    dense_in = torch.rand(256, 13)
    sparse_in = torch.stack([torch.randint(0, n, (256,)) for n in sizes], 1)
    with torch.no_grad():
        assert torch.equal(compact(dense_in, sparse_in), model(dense_in, sparse_in))
    dense_bytes = sum(n * 8 * 4 for n in sizes)
    assert table_bytes(model) == dense_bytes
    assert (
        table_bytes(compact)
        == sum(
            t.nbytes() if isinstance(t, CompactEmbeddingBag) else t.weight.numel() * 4
            for t in compact.emb_l
        )
        < dense_bytes
    )


def test_level_one_model_keeps_row_pointers_only():
    torch.manual_seed(0)
    model = DLRM([50, 60], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])
    for table in model.emb_l:
        table.weight.data = prune(table.weight.data, 1.0, (1, 4), "L1")
    compact = compact_model(model, 4)
    assert table_bytes(compact) == pointer_bytes(50, 1) + pointer_bytes(60, 1)  # row pointers only
    assert all(t.nnz_blocks == 0 for t in compact.emb_l)
    with torch.no_grad():
        out = compact.emb_l[0](torch.randint(0, 50, (7, 1)))
    assert out.shape == (7, 4) and not out.any()


def test_benchmark_runs_at_tiny_scale(tmp_path):
    from benchmarks import compact

    compact.main(["--scale", "tiny", "--repeats", "1", "--out-dir", str(tmp_path)])
    assert (tmp_path / "compact_tiny.csv").exists() and (tmp_path / "compact_tiny.md").exists()
    with open(tmp_path / "compact_tiny.csv") as f:
        rows = list(csv.DictReader(f))
    # block shapes x levels x (bytes, build, forward compact, forward COO at one batch)
    assert len(rows) == 2 * 3 * 4
    assert all(float(r["lit_dlrm"]) > 0 for r in rows)
    by_stage = {r["stage"]: r for r in rows}
    assert float(by_stage["compact bytes L1 (1, 4) 0.9"]["ratio"]) > 4  # compact < 25% of dense
    assert "max |logit diff| 0.0e+00" in by_stage["forward compact L1 (1, 1) 0.9 batch 256"]["note"]


def test_a_table_it_cannot_keep_the_semantics_of_is_refused_by_name():
    torch.manual_seed(0)
    model = DLRM([20, 30], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])
    model.emb_l[1] = nn.EmbeddingBag(30, 4, mode="mean")
    with pytest.raises(ValueError, match=r"emb_l\.1: expected nn.EmbeddingBag\(mode='sum'\)"):
        compact_model(model, 4)
