"""``--model.backend=torchrec``: the same network as the torch backend, state dicts converted both
ways, checkpoints read as the reference's. Skipped without TorchRec, except under ``CI=true``
(``.ci/run`` installs it), where a missing TorchRec fails."""

import os

import pytest
import torch

if os.environ.get("CI") == "true":
    import torchrec  # noqa: F401 (CI installs it: missing there is a failure, not a skip)
else:
    pytest.importorskip("torchrec")

from lit_dlrm.checkpoint import load_state_dict  # noqa: E402
from lit_dlrm.cli import train  # noqa: E402
from lit_dlrm.model import DLRM  # noqa: E402
from lit_dlrm.module import DLRMModule  # noqa: E402
from lit_dlrm.sharded.keys import from_torchrec, to_torchrec  # noqa: E402
from lit_dlrm.sharded.model import TorchRecDLRM, to_kjt  # noqa: E402

SIZES = [7, 1, 50, 3, 12]
SMALL = dict(embedding_dim=4, bottom_mlp=[8], top_mlp=[8])


def batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, 13, generator=g)
    sparse = torch.stack([torch.randint(0, s, (n,), generator=g) for s in SIZES], dim=1)
    return dense, sparse


def test_kjt_holds_column_k_as_feature_k():
    sparse = torch.tensor([[1, 2, 3], [4, 5, 6]])
    kjt = to_kjt(sparse)
    assert kjt.keys() == ["f0", "f1", "f2"]
    for k, key in enumerate(kjt.keys()):
        assert kjt[key].values().tolist() == sparse[:, k].tolist()
        assert kjt[key].lengths().tolist() == [1, 1]


def test_keys_round_trip_and_leave_the_mlps():
    state = DLRM(SIZES, **SMALL).state_dict()
    converted = to_torchrec(state)
    assert "ebc.embedding_bags.t2.weight" in converted and "emb_l.2.weight" not in converted
    assert converted["bot_l.0.weight"] is state["bot_l.0.weight"]
    back = from_torchrec(converted)
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)
    assert to_torchrec(converted) == converted  # already converted: unchanged


@pytest.mark.parametrize("interaction", ["dot", "cat"])
def test_same_logits_and_gradients_both_ways(interaction):
    torch.manual_seed(0)
    ref = DLRM(SIZES, interaction=interaction, **SMALL)
    rec = TorchRecDLRM(SIZES, interaction=interaction, **SMALL)
    assert set(rec.state_dict()) == set(to_torchrec(ref.state_dict()))
    rec.load_state_dict(to_torchrec(ref.state_dict()))
    dense, sparse = batch()
    expected, got = ref(dense, sparse), rec(dense, sparse)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    expected.sum().backward()
    got.sum().backward()
    for k in range(len(SIZES)):  # the reference's sparse gradient, TorchRec's dense one
        torch.testing.assert_close(  # float32's tolerances: rows are summed in another order
            rec.ebc.embedding_bags[f"t{k}"].weight.grad, ref.emb_l[k].weight.grad.to_dense()
        )
    torch.testing.assert_close(rec.top_l[0].weight.grad, ref.top_l[0].weight.grad)
    # and back: the TorchRec weights, perturbed, into a reference network
    with torch.no_grad():
        rec.ebc.embedding_bags["t0"].weight.add_(1.0)
    again = DLRM(SIZES, interaction=interaction, **SMALL)
    again.load_state_dict(from_torchrec(rec.state_dict()))
    torch.testing.assert_close(again(dense, sparse), rec(dense, sparse), rtol=0, atol=1e-6)
    rec.activation_sparsity = again.activation_sparsity = 0.5
    torch.testing.assert_close(again(dense, sparse), rec(dense, sparse), rtol=0, atol=1e-6)


def test_initialisation_is_the_references():
    torch.manual_seed(0)
    rec = TorchRecDLRM([10_000, 4], **SMALL)
    weight = rec.ebc.embedding_bags["t0"].weight
    bound = (1 / 10_000) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(rec.bot_l[0].bias) == rec.bot_l[0].bias.numel()
    meta = TorchRecDLRM([10_000, 4], table_device="meta", **SMALL)
    assert meta.ebc.embedding_bags["t0"].weight.is_meta and not meta.top_l[0].weight.is_meta


def test_dlrm_file_loads_into_torchrec_and_a_torchrec_checkpoint_reads_as_reference(tmp_path):
    torch.manual_seed(0)
    ref = DLRM(SIZES, **SMALL)
    dlrm_file = tmp_path / "dlrm.pt"  # facebookresearch/dlrm's --save-model layout
    torch.save({"state_dict": ref.state_dict(), "iter": 3}, dlrm_file)
    module = DLRMModule(SIZES, backend="torchrec", **SMALL)
    assert isinstance(module.model, TorchRecDLRM)
    module.model.load_state_dict(to_torchrec(load_state_dict(dlrm_file)))
    lightning_file = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict()}, lightning_file)
    state = load_state_dict(lightning_file)
    assert "emb_l.0.weight" in state and not any(k.startswith("ebc.") for k in state)
    dense, sparse = batch()
    read = DLRMModule.from_weights(str(lightning_file))  # the sweep's reader: the torch backend
    torch.testing.assert_close(read(dense, sparse), ref(dense, sparse), rtol=0, atol=1e-6)


def test_backend_is_checked():
    with pytest.raises(ValueError, match="model.backend: expected 'torch' or 'torchrec', got 'x'"):
        DLRMModule(SIZES, backend="x")


def test_cli_trains_the_torchrec_backend_and_the_checkpoint_sweeps(tmp_path, tiny_data_args):
    train(
        [
            *tiny_data_args,
            "--model.backend=torchrec",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    (last,) = (tmp_path / "train" / "version_0" / "checkpoints").glob("last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["hyper_parameters"]["backend"] == "torchrec"
    assert "model.ebc.embedding_bags.t0.weight" in saved["state_dict"]
    module = DLRMModule.from_weights(str(last))
    assert isinstance(module.model, DLRM) and not isinstance(module.model, TorchRecDLRM)


def test_strategy_refuses_what_it_would_ignore():
    from lit_dlrm.sharded.strategy import TorchRecStrategy

    with pytest.raises(ValueError, match=r"sharding_type: expected .*got 'rows'"):
        TorchRecStrategy(sharding_type="rows")
    with pytest.raises(TypeError, match="find_unused_parameters"):  # DMP's DDP, not Lightning's
        TorchRecStrategy(find_unused_parameters=True)
