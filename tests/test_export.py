"""Deployable artifacts: safetensors export of every table kind, the integer lookup against the
sweep's dequantised simulation, torch.export of the dense and compact models, and .lds files read
back by the checkpoint loader."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

from lit_dlrm.checkpoint import CheckpointError, load_state_dict
from lit_dlrm.cli import export
from lit_dlrm.export import ExportError, export_program, load_weights, save_weights
from lit_dlrm.model import DLRM
from lit_dlrm.module import DLRMModule
from lit_dlrm.sparsity.compact import CompactEmbeddingBag, compact_model
from lit_dlrm.sparsity.compression import save_compressed
from lit_dlrm.sparsity.quantize import (
    QuantizedEmbeddingBag,
    QuantizedTable,
    pack_rows,
    quantize_dequantize_tables,
    quantize_rows,
    quantized_model,
    quantized_state_dict,
)

TABLES = [300, 7, 120, 1, 64] * 2


@pytest.fixture(scope="module")
def pruned():
    """A small DLRM whose tables lost about 60% of their (1, 4) blocks, plus a batch."""
    torch.manual_seed(0)
    model = DLRM(TABLES, embedding_dim=8, bottom_mlp=[16], top_mlp=[16]).eval()
    with torch.no_grad():
        for table in model.emb_l:
            blocks = table.weight.view(-1, 2, 4)
            score = blocks.abs().mean(2)
            blocks[score <= score.flatten().quantile(0.6)] = 0.0
    dense = torch.rand(64, 13)
    sparse = torch.stack([torch.randint(0, n, (64,)) for n in TABLES], 1)
    return model, dense, sparse


KINDS = {
    "dense": copy.deepcopy,
    "compact 1": lambda m: compact_model(m, 1),
    "compact 4": lambda m: compact_model(m, 4),
    "int8": lambda m: quantized_model(m, 8),
    "int4": lambda m: quantized_model(m, 4),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_export_reloads_with_identical_logits(kind, pruned, tmp_path):
    model, dense, sparse = pruned
    original = KINDS[kind](model)
    original.activation_sparsity = 0.25
    save_weights(original, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:  # a safetensors file, no pickle
        assert all(not k.startswith("emb_l.") or k.split(".")[1].isdigit() for k in f.keys())
    loaded = load_weights(tmp_path)
    assert [type(t) for t in loaded.emb_l] == [type(t) for t in original.emb_l]
    assert loaded.activation_sparsity == 0.25
    with torch.no_grad():
        assert torch.equal(loaded(dense, sparse), original(dense, sparse))
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["tables"]) == len(TABLES)


def test_compact_and_quantised_exports_hold_their_own_tensors(pruned, tmp_path):
    model, _, _ = pruned
    save_weights(compact_model(model, 4), tmp_path / "c")
    save_weights(quantized_model(model, 4), tmp_path / "q")
    with safe_open(str(tmp_path / "c" / "model.safetensors"), "pt") as f:
        assert "emb_l.0.values" in f.keys() and "emb_l.0.weight" not in f.keys()
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        q = f.get_tensor("emb_l.0.weight.q")
    # the same integers as the sweep's quantised state_dict (and its .lds files)
    assert torch.equal(q, quantized_state_dict(model.state_dict(), 4)["emb_l.0.weight.q"])


def test_broken_exports_are_refused_with_the_file_named(pruned, tmp_path):
    model, _, _ = pruned
    with pytest.raises(ExportError, match="config.json: no such file"):
        load_weights(tmp_path)
    save_weights(quantized_model(model, 8), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tables"][0]["kind"] = "int4"  # int8 integers described as int4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="emb_l.0.weight.q: expected torch.uint8"):
        load_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportError, match="model.safetensors: not a readable safetensors"):
        load_weights(tmp_path)


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_lookup_matches_the_dequantised_simulation(bits, pruned):
    """The integer kernels compute code * scale + bias where the sweep computes q * scale: stated
    tolerance one float32 ulp of 256 * scale per looked-up value (2**-15 * scale); a pruned
    weight (q = 0) is exactly +0.0 either way."""
    model, dense, sparse = pruned
    integer = quantized_model(model, bits)
    simulated = copy.deepcopy(model)
    quantize_dequantize_tables([t.weight for t in simulated.emb_l], bits)
    for k, (table, ref) in enumerate(zip(integer.emb_l, simulated.emb_l)):
        assert isinstance(table, QuantizedEmbeddingBag)
        ids = sparse[:, k : k + 1]
        got, want = table(ids), ref(ids).detach()
        scale = table.table().scale.float()[ids[:, 0]][:, None]
        assert ((got - want).abs() <= 2**-15 * scale).all()
        assert torch.equal(got == 0, want == 0) and not got[got == 0].signbit().any()
        # multi-id bags with offsets, empty bags give zeros
        flat, offsets = torch.randint(0, TABLES[k], (40,)), torch.tensor([0, 5, 5, 39])
        got = table(flat, offsets)
        want = torch.nn.functional.embedding_bag(flat, ref.weight.detach(), offsets, mode="sum")
        assert torch.equal(got[1], torch.zeros(8))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            integer(dense, sparse), simulated(dense, sparse), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_table_gives_back_its_quantized_table(bits, pruned):
    weight = pruned[0].emb_l[0].weight
    qt = quantize_rows(weight, bits)
    back = QuantizedEmbeddingBag(qt).table()
    assert torch.equal(back.q, qt.q) and torch.equal(back.scale, qt.scale)


def test_a_4bit_scale_that_is_no_float16_is_refused():
    q = torch.zeros(2, 2, dtype=torch.uint8)
    scale = torch.tensor([0.5, 2.0**-30], dtype=torch.float32)  # a float16 would flush it to 0
    with pytest.raises(ValueError, match="row 1's scale .* is not a torch.float16"):
        pack_rows(QuantizedTable(q, scale, 4))


@pytest.mark.parametrize("block_width", [None, 1, 4])
def test_torch_export_runs_with_the_same_outputs(block_width, pruned):
    model, dense, sparse = pruned
    eager = model if block_width is None else compact_model(model, block_width)
    if block_width:
        assert any(isinstance(t, CompactEmbeddingBag) for t in eager.emb_l)
    program = export_program(eager, (dense[:8], sparse[:8]))
    for rows in (slice(0, 8), slice(8, 11), slice(0, 64)):  # other batch sizes than the example
        with torch.no_grad():
            got = program.module()(dense[rows], sparse[rows])
            assert torch.equal(got, model(dense[rows], sparse[rows]))


@pytest.mark.parametrize("bits", [32, 8])
def test_lds_files_load_through_the_checkpoint_loader(bits, pruned, tmp_path):
    model, dense, sparse = pruned
    state = model.state_dict()
    save_compressed(state if bits == 32 else quantized_state_dict(state, bits), tmp_path / "m.lds")
    loaded = DLRMModule.from_weights(tmp_path / "m.lds").model.eval()
    expected = copy.deepcopy(model)
    if bits < 32:  # what the sweep scored: the dequantised tables
        quantize_dequantize_tables([t.weight for t in expected.emb_l], bits)
    with torch.no_grad():
        assert torch.equal(loaded(dense, sparse), expected(dense, sparse))
    (tmp_path / "bad.lds").write_bytes((tmp_path / "m.lds").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.lds: not a readable .lds file"):
        load_state_dict(tmp_path / "bad.lds")


def test_export_command_on_a_quantised_lds_keeps_its_integers(pruned, tmp_path):
    model, dense, sparse = pruned
    qstate = quantized_state_dict(model.state_dict(), 8)
    save_compressed(qstate, tmp_path / "m.lds")
    export([f"--ckpt_path={tmp_path / 'm.lds'}", f"--out_dir={tmp_path / 'out'}", "--tables=int8"])
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        for k in range(len(TABLES)):
            assert torch.equal(f.get_tensor(f"emb_l.{k}.weight.q"), qstate[f"emb_l.{k}.weight.q"])
    export([f"--ckpt_path={tmp_path / 'm.lds'}", f"--out_dir={tmp_path / 'c'}", "--tables=compact"])
    assert isinstance(load_weights(tmp_path / "c").emb_l[0], CompactEmbeddingBag)


def test_export_command_refuses_an_option_that_would_do_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export(["--ckpt_path=x.pt", f"--out_dir={tmp_path}", "--block_width=4"])
    assert "--block_width=4: only --tables=compact uses it" in capsys.readouterr().err
