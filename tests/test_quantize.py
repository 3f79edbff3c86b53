"""Row-wise symmetric quantization: error bound, pruned zeros stay zero, packing, sizes on disk."""

import warnings

import pytest
import torch
from pruning_oracle import prune
from torch import nn

from lit_dlrm.sparsity.compression import (
    load_compressed,
    reference_zip_size,
    save_compressed,
    zstd_sparse_size,
)
from lit_dlrm.sparsity.quantize import (
    QMAX,
    QuantizedTable,
    dequantize,
    load_quantized_state_dict,
    pack_int4,
    quantize_dequantize,
    quantize_dequantize_tables,
    quantize_rows,
    quantized_state_dict,
    unpack_int4,
)


def table(n=500, d=16, seed=0):
    """Rows of very different magnitudes (DLRM-init-like small ones included), a zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g) * torch.exp(torch.randn(n, 1, generator=g) * 3) * 1e-2
    w[3] = 0.0
    w[4, ::2] = -0.0
    return w


def bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_error_at_most_half_a_step(nbits, scale_dtype):
    w = table()
    qt = quantize_rows(w, nbits, scale_dtype=scale_dtype, chunk_elems=100)  # many chunks
    assert qt.q.dtype == (torch.int8 if nbits == 8 else torch.uint8)
    assert qt.q.shape == (500, 16 if nbits == 8 else 8) and qt.scale.dtype == scale_dtype
    back = dequantize(qt, chunk_elems=100)
    s = qt.scale.float()[:, None]  # the stored scale: rounded up, never down
    assert ((w - back).abs() <= s / 2 * (1 + 1e-4)).all()
    assert (qt.scale.float() >= w.abs().amax(1) / QMAX[nbits]).all()
    assert ((back - w).abs().amax(1) > 0).any()  # quantization did change something
    unpacked = qt.q if nbits == 8 else unpack_int4(qt.q)
    assert int(unpacked.abs().max()) == QMAX[nbits]  # the grid is used to its end
    assert torch.equal(bits(quantize_dequantize(w, nbits, scale_dtype=scale_dtype)), bits(back))


@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("block_shape", [(1, 1), (1, 4)])
@pytest.mark.parametrize("signed", [False, True])
def test_pruned_weights_stay_exactly_zero(nbits, block_shape, signed):
    w = table(seed=1)
    for level in (0.5, 0.9, 1.0):
        p = prune(w, level, block_shape, "L1", signed_zeros=signed)  # -0.0 too when signed
        zero = p == 0
        assert int(zero.sum()) >= level * w.numel()
        for back in (dequantize(quantize_rows(p, nbits)), quantize_dequantize(p, nbits)):
            assert torch.equal(
                bits(back[zero]), torch.zeros(int(zero.sum()), dtype=torch.int32)
            )  # +0.0


def test_all_zero_rows_and_tables_give_zero_scales_and_no_nan():
    for w in (torch.zeros(7, 4), table()):
        for nbits in (8, 4):
            qt = quantize_rows(w, nbits)
            zero_rows = (w == 0).all(1)
            assert (qt.scale[zero_rows] == 0).all() and (qt.scale[~zero_rows] > 0).all()
            back = dequantize(qt)
            assert torch.isfinite(back).all() and (back[zero_rows] == 0).all()


def test_in_place_and_into_buffers():
    ws = [table(300, 16, 2), table(40, 8, 3)]
    want = [dequantize(quantize_rows(w, 4)) for w in ws]
    buf = [torch.full_like(w, 9.0) for w in ws]
    assert quantize_dequantize_tables(ws, 4, out=buf) is not None
    copies = [w.clone() for w in ws]
    quantize_dequantize_tables(copies, 4)  # in place
    for a, b, c in zip(want, buf, copies):
        assert torch.equal(bits(a), bits(b)) and torch.equal(bits(a), bits(c))
    w = ws[0].clone()
    ptr = w.data_ptr()
    assert quantize_dequantize(w, 8, out=w, chunk_elems=64).data_ptr() == ptr
    assert torch.equal(bits(w), bits(dequantize(quantize_rows(ws[0], 8))))


def test_int4_packing_round_trip_and_layout():
    g = torch.Generator().manual_seed(4)
    q = torch.randint(-7, 8, (33, 10), generator=g, dtype=torch.int8)
    p = pack_int4(q)
    assert p.shape == (33, 5) and p.dtype == torch.uint8
    assert torch.equal(unpack_int4(p), q)
    one = pack_int4(torch.tensor([[-3, 5, 0, 0]], dtype=torch.int8))
    assert one.tolist() == [
        [0x5D, 0x00]
    ]  # low nibble = column 0 (two's complement), pair of zeros = 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="width must be even; got width 5"):
        quantize_rows(torch.randn(4, 5), 4)
    assert quantize_rows(torch.randn(4, 5), 8).q.shape == (4, 5)  # odd widths are fine at 8 bits
    with pytest.raises(ValueError, match="bits: 2"):
        quantize_rows(torch.randn(4, 4), 2)
    w = torch.randn(4, 4)
    w[2, 1] = float("nan")
    with pytest.raises(ValueError, match="row 2 holds inf or NaN"):
        quantize_dequantize(w, 8)
    with pytest.raises(ValueError, match="overflows torch.float16"):
        quantize_rows(torch.full((2, 4), 1e7), 8, scale_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"state\['emb_l.1.weight'\].*float32"):
        quantized_state_dict({"emb_l.1.weight": torch.zeros(3, 4, dtype=torch.float64)})
    with pytest.raises(ValueError, match="come in pairs"):
        load_quantized_state_dict({"emb_l.0.weight.q": torch.zeros(3, 4, dtype=torch.int8)})


def state(level):
    g = torch.Generator().manual_seed(5)
    emb = [torch.rand(n, 16, generator=g) * 0.02 - 0.01 for n in (20000, 3000)]
    return {
        "bot_l.0.weight": torch.randn(8, 13, generator=g),
        "emb_l.0.weight": prune(emb[0], level, (1, 4), "L2"),
        "emb_l.1.weight": prune(emb[1], level, (1, 4), "L2"),
        "top_l.0.bias": torch.randn(8, generator=g),
    }


@pytest.mark.parametrize(("nbits", "scale_dtype"), [(8, torch.bfloat16), (4, torch.float16)])
def test_quantized_state_dict_round_trips_through_both_formats(tmp_path, nbits, scale_dtype):
    sd = state(0.5)
    qsd = quantized_state_dict(sd, nbits, scale_dtype=scale_dtype)
    assert qsd["emb_l.0.weight.scale"].dtype == scale_dtype
    assert list(qsd) == [
        "bot_l.0.weight",
        "emb_l.0.weight.q",
        "emb_l.0.weight.scale",
        "emb_l.1.weight.q",
        "emb_l.1.weight.scale",
        "top_l.0.bias",
    ]
    assert qsd["top_l.0.bias"] is sd["top_l.0.bias"]
    want = load_quantized_state_dict(qsd)
    assert list(want) == list(sd)
    for k in ("emb_l.0.weight", "emb_l.1.weight"):
        assert torch.equal(
            bits(want[k]), bits(dequantize(quantize_rows(sd[k], nbits, scale_dtype=scale_dtype)))
        )
    save_compressed(qsd, tmp_path / "m.lds")
    back = load_compressed(tmp_path / "m.lds")
    r = reference_zip_size(qsd, tmp_path, keep_dir=tmp_path / "kept")
    import zipfile

    with zipfile.ZipFile(r.path) as zf:
        zf.extractall(tmp_path / "x")
    from_zip = torch.load(next((tmp_path / "x").iterdir()), weights_only=True)
    for got in (back, from_zip):
        assert list(got) == list(qsd)
        for k in qsd:
            assert got[k].dtype == qsd[k].dtype and torch.equal(got[k], qsd[k]), k


@pytest.mark.parametrize("nbits", [8, 4])
def test_disk_sizes_shrink_by_the_byte_arithmetic(tmp_path, nbits):
    """Level 0, against float32, through both measurements; bounds from bytes, not measurements.

    Quantized: int8 / packed int4 values of uniform weights are close to incompressible, and
    neither format adds more than a few percent plus headers: at most 1.05 x raw + 16 KiB, with
    raw = rows x (d * bits / 8 + 2 bytes of bfloat16 scale). Float32: of every uniform draw the
    sign and at least 21 mantissa bits are noise (torch.rand keeps 24 random bits), so no
    compressor stores it in fewer than 22/32 of its bytes. Hence dense / quantized >=
    (22/32 x 4d) / (1.05 x (d bits / 8 + 2)) per row: 2.2x at 8 bits, 3.9x at 4 bits (raw ratios
    3.6x and 6.4x)."""
    sd = state(0.0)
    qsd = quantized_state_dict(sd, nbits)
    rows = sum(sd[k].shape[0] for k in ("emb_l.0.weight", "emb_l.1.weight"))
    fp32_raw, q_raw = rows * 16 * 4, rows * (16 * nbits // 8 + 2)
    for measure in (reference_zip_size, zstd_sparse_size):
        dense = measure(sd, tmp_path, measure_read=False).bytes
        quant = measure(qsd, tmp_path, measure_read=False).bytes
        assert dense >= 22 / 32 * fp32_raw
        assert quant <= 1.05 * q_raw + 16384
        assert dense / quant >= 22 / 32 * fp32_raw / (1.05 * q_raw + 16384), measure.__name__


def test_torch_post_training_sparse_quantize_does_not_keep_pruned_zeros():
    """Why this module is symmetric: torch's per-row affine quint8 (float_qparams) does not map
    the pruned 0.0 to 0.0. Same table, same masks, both sides."""
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier
    from torch.ao.pruning._experimental.data_sparsifier.quantization_utils import (
        post_training_sparse_quantize,
    )

    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(64, 16, mode="sum"))
    w = model[0].weight.detach().clone()
    try:
        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
            warnings.simplefilter("ignore")
            post_training_sparse_quantize(
                model,
                DataNormSparsifier,
                sparsify_first=True,
                sparsity_level=0.5,
                sparse_block_shape=(1, 4),
                norm="L1",
            )
        qw = model[0].weight()
    except (RuntimeError, NotImplementedError) as e:  # no quantized engine in this build
        pytest.skip(f"torch's quantized embeddings are unavailable here: {e}")
    assert qw.qscheme() == torch.per_channel_affine_float_qparams
    pruned = prune(w, 0.5, (1, 4), "L1") == 0
    theirs = torch.dequantize(qw)[pruned]
    assert (theirs != 0).any()  # torch: pruned weights come back non-zero
    assert (dequantize(quantize_rows(prune(w, 0.5, (1, 4), "L1"), 8))[pruned] == 0).all()  # ours


def test_quantized_table_shape():
    qt = QuantizedTable(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3), 4)
    assert qt.shape == (3, 8)
