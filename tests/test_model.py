"""The DLRM network: shapes, interaction order, reference keys and initialisation."""

import math

import numpy as np
import pytest
import torch

from lit_dlrm.model import DLRM, sparsify_activations
from lit_dlrm.module import BottomCache

KAGGLE_KEYS = (
    [f"emb_l.{k}.weight" for k in range(26)]
    + [f"bot_l.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    + [f"top_l.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
)


def test_kaggle_shapes_and_reference_keys():
    model = DLRM(table_sizes=[7] * 26)
    assert sorted(model.state_dict()) == sorted(KAGGLE_KEYS)
    assert [m.out_features for m in model.bot_l if isinstance(m, torch.nn.Linear)] == [
        512,
        256,
        64,
        16,
    ]
    assert model.top_l[0].in_features == 16 + 27 * 26 // 2 == 367
    assert [m.out_features for m in model.top_l if isinstance(m, torch.nn.Linear)] == [512, 256, 1]
    # ReLU after every bottom layer (the last too); none after the last top layer.
    assert isinstance(model.bot_l[-1], torch.nn.ReLU) and isinstance(
        model.top_l[-1], torch.nn.Linear
    )
    logits = model(torch.rand(5, 13), torch.randint(0, 7, (5, 26)))
    assert logits.shape == (5,)


def test_dot_interaction_is_the_row_major_lower_triangle():
    torch.manual_seed(0)
    model = DLRM(table_sizes=[4, 5, 6], num_dense=2, embedding_dim=3, bottom_mlp=[4], top_mlp=[2])
    x = torch.randn(2, 3)
    embs = [torch.randn(2, 3) for _ in range(3)]
    z = model.interact(x, embs)
    vectors = [x, *embs]
    expected_pairs = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    by_hand = torch.stack([(vectors[i] * vectors[j]).sum(1) for i, j in expected_pairs], dim=1)
    torch.testing.assert_close(z, torch.cat([x, by_hand], dim=1))


def test_cat_interaction_and_configurable_sizes():
    model = DLRM(
        [3, 4], num_dense=5, embedding_dim=8, bottom_mlp=[6], top_mlp=[9, 7], interaction="cat"
    )
    assert model.top_l[0].in_features == 8 * 3
    assert model(torch.rand(4, 5), torch.randint(0, 3, (4, 2))).shape == (4,)
    with pytest.raises(ValueError, match="interaction"):
        DLRM([3], interaction="sum")


def test_one_id_per_bag_looks_up_that_row():
    model = DLRM([10, 20], num_dense=1, embedding_dim=4, bottom_mlp=[], top_mlp=[])
    sparse = torch.tensor([[3, 7], [9, 0]])
    embs = model.embed(sparse)
    torch.testing.assert_close(embs[1], model.emb_l[1].weight[[7, 0]])


def test_reference_initialisation():
    torch.manual_seed(0)
    model = DLRM([100, 10_000])
    for table in model.emb_l:
        bound = math.sqrt(1 / table.num_embeddings)
        assert table.weight.abs().max() <= bound and table.weight.abs().max() > 0.9 * bound
    first = model.bot_l[0]  # 13 -> 512
    std = np.std(first.weight.detach().numpy())
    assert abs(std - math.sqrt(2 / (13 + 512))) < 0.1 * math.sqrt(2 / (13 + 512))
    assert abs(float(first.bias.detach().std()) - math.sqrt(1 / 512)) < 0.15 * math.sqrt(1 / 512)
    assert all(t.sparse for t in model.emb_l)


def test_click_metrics_match_scikit_learn_whatever_the_batching():
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    from lit_dlrm.metrics import ClickMetrics

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(5000, generator=g) < 0.3).float()
    logits = 2 * labels - 1 + 2 * torch.randn(5000, generator=g)
    probs = torch.sigmoid(logits).double().numpy()
    for flush_every in (1, 700, 10**9):
        metrics = ClickMetrics(flush_every=flush_every)
        for chunk in range(0, 5000, 333):
            metrics.update(logits[chunk : chunk + 333], labels[chunk : chunk + 333])
        values = metrics.compute()
        assert values["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)
        assert values["log_loss"] == pytest.approx(log_loss(labels, probs), rel=1e-6)
        assert values["accuracy"] == pytest.approx(accuracy_score(labels, probs > 0.5))
        assert values["f1"] == pytest.approx(f1_score(labels, probs > 0.5), rel=1e-5)
        rate = float(labels.double().mean())
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        assert values["ne"] == pytest.approx(values["log_loss"] / entropy, rel=1e-9)
        assert values["calibration"] == pytest.approx(probs.mean() / rate, rel=1e-6)


def test_activation_sparsity_zeroes_the_smallest_entries_of_each_row():
    torch.manual_seed(0)
    z = torch.randn(64, 367)
    for level in (0.0, 0.3, 0.9, 1.0):
        out = sparsify_activations(z, level)
        pruned = round(level * 367)
        assert ((out == 0).sum(dim=1) == pruned).all()
        kept = out != 0
        assert torch.equal(out[kept], z[kept])  # survivors untouched
        if 0 < pruned < 367:  # every zeroed entry is no larger than every survivor, row by row
            largest_zeroed = z.abs().masked_fill(kept, 0).amax(dim=1)
            smallest_kept = z.abs().masked_fill(~kept, float("inf")).amin(dim=1)
            assert (largest_zeroed <= smallest_kept).all()


def test_activation_sparsity_reaches_the_top_mlp_only_when_set():
    torch.manual_seed(0)
    model = DLRM(table_sizes=[20] * 26).eval()
    dense, sparse = torch.rand(8, 13), torch.randint(0, 20, (8, 26))
    with torch.no_grad():
        before = model(dense, sparse)
        model.activation_sparsity = 0.9
        z = model.features(dense, sparse)
        after = model(dense, sparse)
        model.activation_sparsity = 0.0
        again = model(dense, sparse)
    assert ((z == 0).sum(dim=1) == round(0.9 * 367)).all()
    assert torch.equal(after, model.top_l(z).squeeze(1)) and not torch.allclose(before, after)
    assert torch.equal(before, again)
    assert "activation_sparsity" not in "".join(model.state_dict())


def test_bottom_cache_reuses_an_output_only_while_rows_and_weights_are_unchanged():
    torch.manual_seed(0)
    net = DLRM([50, 60, 70], num_dense=4, embedding_dim=8, bottom_mlp=[16], top_mlp=[16])
    calls = []
    net.bot_l.register_forward_hook(lambda *_: calls.append(1))
    dense, sparse = torch.rand(32, 4), torch.randint(0, 50, (32, 3))
    cache = BottomCache()
    with torch.no_grad():
        first = cache(net.bot_l, dense, 0)
        assert cache(net.bot_l, dense.clone(), 0) is first and len(calls) == 1  # same rows
        other = dense + 1
        assert torch.equal(cache(net.bot_l, other, 0), net.bot_l(other)) and len(calls) == 3
        net.bot_l[0].weight.add_(0.5)  # a fine-tuned bottom MLP: computed afresh
        fresh = cache(net.bot_l, other, 0)
        assert len(calls) == 4 and torch.equal(fresh, net.bot_l(other))
        assert torch.equal(net(other, sparse, fresh), net(other, sparse))  # the same logits


def test_bottom_cache_keeps_every_batch_in_one_slab(monkeypatch):
    """Two small allocations per batch kept the heap pages of each batch's freed temporaries
    resident (2 GB over a Kaggle-sized test split); the batches share large slabs instead."""
    monkeypatch.setattr(BottomCache, "SLAB_ROWS", 100)
    net = DLRM([50], num_dense=4, embedding_dim=8, bottom_mlp=[16], top_mlp=[16])
    cache, batches = BottomCache(), [torch.rand(32, 4) for _ in range(5)]
    with torch.no_grad():
        outputs = [cache(net.bot_l, dense, i) for i, dense in enumerate(batches)]
        for dense, out in zip(batches, outputs):
            assert torch.equal(out, net.bot_l(dense))
    slabs = {t.untyped_storage().data_ptr() for kept in cache.batches.values() for t in kept}
    assert len(slabs) == 2  # 3 batches of 32 rows fill the first 100-row slab
