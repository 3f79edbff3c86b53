"""Checkpoint size measurement: the reference zip and the sparse-shuffle-zstd format."""

import io
import json
import os
import struct
import tracemalloc
import zipfile

import pytest
import torch
from pruning_oracle import prune

from lit_dlrm.sparsity import compression
from lit_dlrm.sparsity.compression import (
    load_compressed,
    reference_zip_size,
    save_compressed,
    zstd_sparse_size,
)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def sample_state_dict(level=0.5, signed=False):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, 16, generator=g) * 0.03
    return {
        "emb_l.0.weight": prune(w, level, (1, 4), "L1", signed_zeros=signed),
        "emb_l.1.weight": torch.randn(3, 16, generator=g),
        "bot_l.0.bias": torch.tensor([0.0, -0.0, float("inf"), float("nan"), -1.5]),
        "step": torch.tensor(7, dtype=torch.int64),
        "int_min": torch.tensor([-(2**31), 0, 5], dtype=torch.int32),  # sign-only bit pattern
        "half": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 16),
    }


@pytest.mark.parametrize("block", [None, 7])  # 7: survivors shuffled in many short blocks
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_is_bit_exact(tmp_path, monkeypatch, signed, block):
    if block:
        monkeypatch.setattr(compression, "BLOCK", block)
    sd = sample_state_dict(signed=signed)
    if signed:
        assert torch.signbit(sd["emb_l.0.weight"][sd["emb_l.0.weight"] == 0]).any()
    path = tmp_path / "m.lds"
    size = save_compressed(sd, path)
    assert size == os.path.getsize(path)
    back = load_compressed(path)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
        assert torch.equal(bits(back[k]), bits(sd[k])), k  # -0.0 and NaN payloads included
    assert [p.name for p in tmp_path.iterdir()] == ["m.lds"]  # no temp file left behind


def test_size_measurement_holds_the_tensors_in_flight_not_the_file(tmp_path):
    """Encoded tensors go to the file as they finish and the read-back drops each decoded one:
    numpy's and the compressor's buffers stay well under the state dict's size."""
    g = torch.Generator().manual_seed(0)
    sd = {f"emb_l.{i}.weight": torch.randn(1 << 17, 16, generator=g) for i in range(8)}
    total = sum(t.numel() * t.element_size() for t in sd.values())  # 64 MiB, ~92% of it kept
    tracemalloc.start()
    try:
        zstd_sparse_size(sd, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < total / 2  # it held all of it and more: 1.3x


def test_version_1_files_still_load(tmp_path, monkeypatch):
    """Version 1 shuffled each tensor's survivors as one block and had no "block" key."""
    sd = sample_state_dict(signed=True)
    monkeypatch.setattr(compression, "BLOCK", 1 << 30)
    path = tmp_path / "m.lds"
    save_compressed(sd, path)
    raw = path.read_bytes()
    hlen = struct.unpack("<Q", raw[8:16])[0]
    header = json.loads(raw[16 : 16 + hlen])
    del header["block"]
    v1 = raw[:4] + struct.pack("<IQ", 1, hlen) + json.dumps(header).encode().ljust(hlen)
    path.write_bytes(v1 + raw[16 + hlen :])
    back = load_compressed(path)
    assert all(torch.equal(bits(back[k]), bits(sd[k])) for k in sd)


def test_reference_zip_reports_bytes_and_floored_mib(tmp_path):
    sd = sample_state_dict()
    keep = tmp_path / "kept"
    r = reference_zip_size(sd, tmp_path, keep_dir=keep, stem="ref")
    assert r.format == "torch.save+deflate"
    assert r.path is not None and r.bytes == os.path.getsize(r.path)
    assert r.zip_file_size == r.bytes >> 20 and r.write_s > 0 and r.read_s > 0
    # the kept file is what the reference writes: a zip holding a torch.save file
    with zipfile.ZipFile(r.path) as zf:
        assert zf.namelist() == ["ref.pt"]
        assert zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize("level", [0.0, 0.9])
def test_reference_zip_is_zipfiles_archive_to_within_a_percent(tmp_path, level):
    """One pass through zlib-ng gives the archive the reference's zipfile writes: torch.save's
    bytes (of a stream: its records under 'archive/', not the file's stem; zipfile reads them,
    CRC checked), its size within 1%."""
    g = torch.Generator().manual_seed(0)
    tables = [torch.randn(rows, 16, generator=g) * 0.03 for rows in (20_000, 3_000, 500)]
    sd = {f"emb_l.{i}.weight": prune(w, level, (1, 4), "L2") for i, w in enumerate(tables)}
    ours = reference_zip_size(sd, tmp_path, keep_dir=tmp_path / "kept", stem="m")
    torch.save(sd, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "theirs.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "m.pt", arcname="m.pt")
    with zipfile.ZipFile(ours.path) as zf:
        assert zf.testzip() is None and zf.namelist() == ["m.pt"]
        saved = io.BytesIO()
        torch.save(sd, saved)
        assert zf.read("m.pt") == saved.getvalue()
    theirs = os.path.getsize(tmp_path / "theirs.zip")
    assert abs(ours.bytes / theirs - 1) < 0.01, (ours.bytes, theirs)


def test_files_are_removed_unless_kept(tmp_path):
    sd = sample_state_dict()
    for fn in (reference_zip_size, zstd_sparse_size):
        r = fn(sd, tmp_path)
        assert r.path is None
    assert list(tmp_path.iterdir()) == []
    r = zstd_sparse_size(sd, tmp_path, keep_dir=tmp_path / "keep")
    assert os.path.getsize(r.path) == r.bytes
    assert torch.equal(load_compressed(r.path)["emb_l.0.weight"], sd["emb_l.0.weight"])
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["model.lds"]


def test_fully_pruned_plus_zero_model_is_tiny_and_beats_reference(tmp_path):
    w = torch.randn(20000, 16) * 0.01
    plus = {"emb": prune(w, 1.0, (1, 1), "L1")}
    signed = {"emb": prune(w, 1.0, (1, 1), "L1", signed_zeros=True)}
    raw = w.numel() * 4
    ours = zstd_sparse_size(plus, tmp_path)
    assert ours.bytes < raw / 1000
    assert zstd_sparse_size(signed, tmp_path).bytes < raw / 20  # sign bits cost ~1 bit/value
    for level in (0.0, 0.5, 0.9, 1.0):
        sd = {"emb": prune(w, level, (1, 4), "L2")}
        assert zstd_sparse_size(sd, tmp_path).bytes <= reference_zip_size(sd, tmp_path).bytes


def test_bad_file_is_named(tmp_path):
    p = tmp_path / "x.lds"
    p.write_bytes(b"nope" * 8)
    with pytest.raises(ValueError, match="x.lds: not a sparse-shuffle-zstd file"):
        load_compressed(p)
