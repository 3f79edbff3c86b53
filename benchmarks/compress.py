"""Checkpoint size and write/read time: torch.save + deflate (the reference) vs sparse-shuffle-zstd.

    python benchmarks/compress.py --scale kaggle   # 2.16 GB model; the reference deflate ~70 s/level
    python benchmarks/compress.py --scale small

The model is a DLRM state_dict (Kaggle-sized tables as in benchmarks/sparsify.py, random MLPs of
the Kaggle architecture), pruned with L1 (1, 1) at levels 0.0, 0.5, 0.9 and 1.0. Rows:

* zeros `+0.0`: our pruning; zeros `signed (-0.0)`: the reference's own `weight * mask`
  pruning (pruned negatives are -0.0), which deflate handles badly;
* for each, `torch.save+deflate` (the reference's method) and `sparse-shuffle-zstd` on the same
  data (`--no-reference-signed` skips the reference on the signed data: ~1 min per level).

Sizes are bytes (MiB floored is the reference's `zip_file_size` column); `size_vs_ref` is ours
over the reference's bytes on the same data, `write_speedup` the reference's write time over ours. Files go to a temporary folder
(`--workdir`) and are deleted. Writes `benchmarks/results/compress_<scale>.csv` and `.md` (the
detailed table above). `run(scale)` returns the common benchmark schema instead: per level and
zeros, a "compress <level> write" and a "... read" row (lit_dlrm = sparse-shuffle-zstd seconds,
reference = torch.save+deflate seconds, ratio = speedup) with both sizes in the note.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sparsify import DIM, RESULTS, build_tables, table_sizes  # noqa: E402
from benchmarks.tables import markdown_table, write_results  # noqa: E402
from lit_dlrm.sparsity.compression import reference_zip_size, zstd_sparse_size  # noqa: E402
from lit_dlrm.sparsity.masks import prune_tables  # noqa: E402
from lit_dlrm.sweep.grid import GridPoint  # noqa: E402

OURS, REF = "sparse-shuffle-zstd", "torch.save+deflate"

LEVELS = (0.0, 0.5, 0.9, 1.0)
BOT = (13, 512, 256, 64, 16)
TOP = (367, 512, 256, 1)


def mlp_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for prefix, dims in (("bot_l", BOT), ("top_l", TOP)):
        for j, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
            sd[f"{prefix}.{2 * j}.weight"] = torch.randn(o, i, generator=g) * (2 / (i + o)) ** 0.5
            sd[f"{prefix}.{2 * j}.bias"] = torch.randn(o, generator=g) * (1 / o) ** 0.5
    return sd


def run(
    scale: str = "small",
    out_dir: str | os.PathLike | None = RESULTS,
    workdir: str | None = None,
    levels=LEVELS,
    reference: bool = True,
    reference_signed: bool = True,
) -> list[dict]:
    tables = build_tables(table_sizes(scale))
    mlp = mlp_state(torch.Generator().manual_seed(1))
    raw = sum(t.numel() for t in tables) * 4 + sum(t.numel() * 4 for t in mlp.values())
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for level in levels:
            for signed in (False, True):
                pruned = prune_tables(tables, GridPoint("L1", (1, 1), level), signed_zeros=signed)
                sd = {f"emb_l.{i}.weight": t for i, t in enumerate(pruned)} | mlp
                results = []
                if reference and (not signed or reference_signed):
                    results.append(reference_zip_size(sd, tmp))
                results.append(zstd_sparse_size(sd, tmp))
                for r in results:
                    rows.append(
                        {
                            "scale": scale,
                            "level": level,
                            "zeros": "signed (-0.0)" if signed else "+0.0",
                            "format": r.format,
                            "bytes": r.bytes,
                            "zip_file_size_mib": r.zip_file_size,
                            "of_raw": round(r.bytes / raw, 4),
                            "write_s": round(r.write_s, 2),
                            "read_s": round(r.read_s, 2),
                        }
                    )
                del sd, pruned
                gc.collect()
    # compare each row with the reference on the same data (same level and same zeros)
    ref = {(r["level"], r["zeros"]): r for r in rows if r["format"] == "torch.save+deflate"}
    for r in rows:
        base = ref.get((r["level"], r["zeros"]))
        r["size_vs_ref"] = round(r["bytes"] / base["bytes"], 3) if base else ""
        r["write_speedup"] = (
            round(base["write_s"] / r["write_s"], 1) if base and r["write_s"] else ""
        )
    text = _markdown(rows, scale, raw)
    if out_dir is not None:
        write_results(out_dir, f"compress_{scale}", rows, text)
    print(text)
    return common_rows(rows)


def common_rows(rows: list[dict]) -> list[dict]:
    """The detailed rows in the common benchmark schema (see the module docstring)."""
    out = []
    for r in rows:
        if r["format"] != OURS:
            continue
        ref = next(
            (
                q
                for q in rows
                if q["format"] == REF and q["level"] == r["level"] and q["zeros"] == r["zeros"]
            ),
            None,
        )
        zeros = "" if r["zeros"] == "+0.0" else " signed"
        sizes = f"{r['zeros']} zeros; sizes MiB: ours {r['bytes'] / 2**20:.1f}"
        if ref:
            sizes += f", deflate {ref['bytes'] / 2**20:.1f} (ours/deflate {r['bytes'] / ref['bytes']:.3f})"
        for op in ("write", "read"):
            ours_s, ref_s = r[f"{op}_s"], (ref[f"{op}_s"] if ref else None)
            out.append(
                {
                    "stage": f"compress {r['level']:g}{zeros} {op}",
                    "unit": "s",
                    "lit_dlrm": ours_s,
                    "reference": ref_s,
                    "ratio": round(ref_s / ours_s, 1) if ref_s and ours_s else None,
                    "lit_dlrm_peak_mib": None,
                    "reference_peak_mib": None,
                    "floor": None,
                    "note": sizes,
                }
            )
    return out


def _markdown(rows, scale, raw) -> str:
    head = (
        f"Checkpoint compression, scale={scale}: state_dict {raw / 2**20:.0f} MiB raw fp32 "
        f"(26 tables x {DIM} + MLPs), L1 (1, 1) pruning; torch {torch.__version__}.\n\n"
    )
    return head + markdown_table(rows, list(rows[0]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=["kaggle", "small", "tiny"], default="small")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--workdir", default=None, help="where temporary checkpoints go")
    ap.add_argument(
        "--no-reference-signed",
        action="store_true",
        help="skip torch.save+deflate on the signed-zero models",
    )
    args = ap.parse_args(argv)
    run(args.scale, args.out_dir, args.workdir, reference_signed=not args.no_reference_signed)


if __name__ == "__main__":
    main()
