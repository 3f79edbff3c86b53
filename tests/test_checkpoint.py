"""Checkpoints: facebookresearch/dlrm's layout, bare state_dicts, and refusing unsafe files."""

import pickle
from pathlib import Path

import dlrm_reference as ref
import numpy as np
import pytest
import torch

from lit_dlrm.checkpoint import CheckpointError, load_state_dict
from lit_dlrm.model import DLRM
from lit_dlrm.module import DLRMModule

TABLES = [11, 5, 8]


def reference_forward(state, dense, sparse):
    """facebookresearch/dlrm's forward for this layout, written out in numpy: MLPs with ReLU
    (sigmoid after the last top layer), one embedding row per bag, dot interaction on the
    strictly lower triangle, in row-major order."""
    sd = {k: v.numpy().astype(np.float64) for k, v in state.items()}

    def run_mlp(prefix, h, last):
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix)})
        for n, i in enumerate(idx):
            h = h @ sd[f"{prefix}.{i}.weight"].T + sd[f"{prefix}.{i}.bias"]
            h = 1 / (1 + np.exp(-h)) if (n == len(idx) - 1 and last) else np.maximum(h, 0)
        return h

    x = run_mlp("bot_l", dense.numpy().astype(np.float64), last=False)
    embs = [sd[f"emb_l.{k}.weight"][sparse[:, k].numpy()] for k in range(len(TABLES))]
    T = np.stack([x, *embs], axis=1)
    Z = T @ T.transpose(0, 2, 1)
    pairs = [Z[:, i, j] for i in range(T.shape[1]) for j in range(i)]
    return run_mlp("top_l", np.concatenate([x, np.stack(pairs, 1)], 1), last=True)[:, 0]


@pytest.fixture
def model_and_batch():
    torch.manual_seed(1)
    model = DLRM(TABLES, num_dense=13, embedding_dim=4, bottom_mlp=[8], top_mlp=[6])
    dense, sparse = torch.rand(32, 13), torch.stack([torch.randint(0, n, (32,)) for n in TABLES], 1)
    return model, dense, sparse


@pytest.mark.parametrize("numpy1", [False, True])
def test_reference_save_model_checkpoint_loads_and_matches(tmp_path, model_and_batch, numpy1):
    _, dense, sparse = model_and_batch
    np.random.seed(0)
    theirs = ref.make_dlrm(TABLES, m_spa=4, bottom=(8,), top=(6,))
    lS_o = torch.arange(len(dense)).expand(len(TABLES), -1)
    batch = (dense, lS_o, sparse.T, torch.randint(0, 2, (len(dense), 1)).float())
    path = tmp_path / "dlrm.pt"
    ref.train_and_save(theirs, [batch], [batch], path, numpy1=numpy1)  # --save-model's dict
    with pytest.raises(pickle.UnpicklingError):  # its numpy scalars: why the allow-list exists
        torch.load(path, weights_only=True)

    loaded = DLRMModule.from_weights(path).model
    with torch.no_grad():
        ours = torch.sigmoid(loaded(dense, sparse))
        np.testing.assert_allclose(
            ours.double().numpy(), reference_forward(theirs.state_dict(), dense, sparse), rtol=1e-5
        )
        assert (ours - theirs(*batch[:3])[:, 0]).abs().max() <= 1e-6  # dlrm's own forward
    assert loaded.interaction == "dot" and [t.num_embeddings for t in loaded.emb_l] == TABLES


def mapped_files(tensor: torch.Tensor) -> set[str]:
    """The files /proc/self/maps shows mapped where ``tensor``'s first element lies."""
    ptr, names = tensor.data_ptr(), set()
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= ptr < end and len(fields) == 6:
            names.add(fields[5].strip())
    return names


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_from_weights_maps_the_tables_from_the_file(tmp_path, model_and_batch):
    """The sweep's dense tables are the checkpoint's pages, not a copy in anonymous memory;
    writes to them stay private (copy-on-write): the file never changes."""
    model, dense, sparse = model_and_batch
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    before = path.read_bytes()
    loaded = DLRMModule.from_weights(path).model
    assert all(mapped_files(t.weight) == {str(path)} for t in loaded.emb_l)
    with torch.no_grad():
        assert torch.equal(loaded(dense, sparse), model(dense, sparse))
        loaded.emb_l[0].weight.add_(1.0)
    assert path.read_bytes() == before


def test_bare_state_dict_loads_identically(tmp_path, model_and_batch):
    model, dense, sparse = model_and_batch
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    loaded = DLRMModule.from_weights(tmp_path / "bare.pt").model
    with torch.no_grad():
        assert torch.equal(loaded(dense, sparse), model(dense, sparse))


class Exploit:
    def __reduce__(self):
        return (print, ("this would have run arbitrary code",))


def test_pickle_that_runs_code_is_refused(tmp_path, model_and_batch, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": model_and_batch[0].state_dict(), "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused"):
        load_state_dict(path)
    assert "arbitrary code" not in capsys.readouterr().out


def test_corrupt_truncated_and_wrong_checkpoints_are_refused(tmp_path, model_and_batch):
    good = tmp_path / "good.pt"
    torch.save(model_and_batch[0].state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable torch checkpoint"):
        load_state_dict(truncated)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a DLRM state_dict"):
        load_state_dict(tmp_path / "other.pt")
    state = model_and_batch[0].state_dict()
    state["top_l.0.weight"] = torch.zeros(6, 99)  # a top MLP that fits no interaction
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="wrong.pt"):
        DLRMModule.from_weights(tmp_path / "wrong.pt")
