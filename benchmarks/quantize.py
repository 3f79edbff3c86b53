"""Time and memory of row-wise quantization: lit_dlrm's symmetric int8/int4 against torch's path.

    python -m benchmarks.quantize --scale kaggle   # 26 tables, 33.8M rows (minutes)
    python -m benchmarks.quantize --scale small

Tables as in benchmarks/sparsify.py. Each (side, bits) runs in a fresh process; "extra" peak
memory is over the loaded tables, reset between steps (``/proc/self/clear_refs``):

* `lit_dlrm`: `quantize_dequantize_tables` in place (what a sweep point pays to evaluate the
  quantized model), then `quantized_state_dict` (the tensors written to disk), whose
  sparse-shuffle-zstd size is reported against the float32 tables' (level 0);
* `reference`: the quantize step of torch's `post_training_sparse_quantize`: the tables as
  `nn.EmbeddingBag`s, `prepare` + `convert` with `float_qparams_weight_only_qconfig` (8 bits) or
  its `_4bit` variant (per-row affine quint8 / quint4x2), then `torch.dequantize` of every
  table (the float32 tables it stands for).

Writes `benchmarks/results/quantize_<scale>.csv` and `.md` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.memory import peak_rss_mib, reset_peak, rss_mib
from benchmarks.sparsify import CAPS, DIM, REPO, build_tables, table_sizes
from benchmarks.tables import markdown_table, write_results
from lit_dlrm.sparsity.compression import zstd_sparse_size
from lit_dlrm.sparsity.quantize import quantize_dequantize_tables, quantized_state_dict

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn):
    base = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, peak_rss_mib() - base


def ours(tables, bits: int) -> dict:
    state = {f"emb_l.{i}.weight": t for i, t in enumerate(tables)}
    with tempfile.TemporaryDirectory() as tmp:
        dense_bytes = zstd_sparse_size(state, tmp, measure_read=False).bytes
        qsd, state_s, state_mib = _timed(lambda: quantized_state_dict(state, bits))
        q_bytes = zstd_sparse_size(qsd, tmp, measure_read=False).bytes
    del qsd
    _, qdq_s, qdq_mib = _timed(lambda: quantize_dequantize_tables(tables, bits))
    return {
        "seconds": qdq_s,
        "mib": qdq_mib,
        "state_s": state_s,
        "state_mib": state_mib,
        "dense_bytes": dense_bytes,
        "q_bytes": q_bytes,
    }


def reference(tables, bits: int) -> dict:
    from torch.ao.quantization import convert, prepare
    from torch.ao.quantization.qconfig import (
        float_qparams_weight_only_qconfig,
        float_qparams_weight_only_qconfig_4bit,
    )

    model = nn.Module()
    model.emb_l = nn.ModuleList()
    for t in tables:  # the tables themselves, no copy
        bag = nn.EmbeddingBag(1, t.shape[1], mode="sum")
        bag.weight = nn.Parameter(t, requires_grad=False)
        bag.qconfig = (
            float_qparams_weight_only_qconfig
            if bits == 8
            else float_qparams_weight_only_qconfig_4bit
        )
        model.emb_l.append(bag)

    def quantize_dequantize():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(model, inplace=True)
            convert(model, inplace=True)
        return [torch.dequantize(bag.weight()) for bag in model.emb_l]

    _, sec, mib = _timed(quantize_dequantize)
    return {"seconds": sec, "mib": mib}


def run_stage(name: str, scale: str) -> dict:
    side, bits = name.split()
    torch.manual_seed(0)
    tables = build_tables(table_sizes(scale))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    res = ours(tables, int(bits)) if side == "lit_dlrm" else reference(tables, int(bits))
    return {"stage": name, **res}


def _run_isolated(name: str, scale: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.quantize", "--child", name, "--scale", scale]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(
    scale: str = "small", out_dir: str | os.PathLike | None = RESULTS, isolate: bool = True
) -> list[dict]:
    model_mib = sum(table_sizes(scale)) * DIM * 4 / 2**20
    measure = (lambda n: _run_isolated(n, scale)) if isolate else (lambda n: run_stage(n, scale))  # noqa: E731
    rows = []
    for bits in (8, 4):
        o, r = measure(f"lit_dlrm {bits}"), measure(f"reference {bits}")
        rows.append(
            {
                "stage": f"quantize + dequantize all tables, {bits} bits",
                "unit": "s",
                "lit_dlrm": round(o["seconds"], 3),
                "reference": round(r["seconds"], 3),
                "ratio": round(r["seconds"] / o["seconds"], 1),
                "lit_dlrm_peak_mib": round(o["mib"], 1),
                "reference_peak_mib": round(r["mib"], 1),
                "floor": None,
                "note": (
                    f"lit_dlrm in place (symmetric, bf16 scales); reference prepare+convert "
                    f"(affine float_qparams) + torch.dequantize. quantized_state_dict "
                    f"{o['state_s']:.2f} s, +{o['state_mib']:.0f} MiB; "
                    "zstd_sparse bytes at level 0: "
                    f"{o['q_bytes']:,} against float32 {o['dense_bytes']:,} "
                    f"({o['dense_bytes'] / o['q_bytes']:.2f}x smaller)"
                ),
            }
        )
    text = (
        f"Quantization, scale={scale}: 26 tables x {DIM}, {model_mib:.0f} MiB fp32; torch "
        f"{torch.__version__}. ratio = reference / lit_dlrm. *_peak_mib = extra peak RSS over "
        f"the loaded tables, each side in a fresh process.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    if out_dir is not None:
        write_results(out_dir, f"quantize_{scale}", rows, text)
    print(text)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=sorted(CAPS), default="small")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one stage, print JSON
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_stage(args.child, args.scale)))
        return
    run(args.scale, args.out_dir)


if __name__ == "__main__":
    main()
