"""Time one sparsity grid point: lit_dlrm's masks versus torch's DataNormSparsifier.

    python benchmarks/sparsify.py --scale kaggle   # 26 tables, 33.8M rows, 2.16 GB (minutes)
    python benchmarks/sparsify.py --scale small    # tables capped at 200k rows (seconds)

Tables get the Kaggle row counts (capped at `small`/`tiny` scale), width 16 and DLRM's init
U(-sqrt(1/n), sqrt(1/n)), generated in chunks. Each measured stage runs in a fresh subprocess, so
its peak RSS (the child's ru_maxrss, tables included) is clean:

* `floor`: clone every table (the unavoidable read + write of one pruned copy);
* `lit_dlrm <norm> <block>`: `prune_tables` at level 0.5 (time is flat in the level);
* `reference <norm> <block>`: DataNormSparsifier `step()` + `squash_mask()` at level 0.5. At the
  kaggle scale only L1 is run per block shape (its cost does not depend on the norm);
* `grid lit_dlrm`: the whole 80-point grid. At kaggle scale it is extrapolated from measured
  levels 0.0, 0.5, 0.99, 1.0 per (norm, block) (interior levels: mean of 0.5 and 0.99, x18);
  at smaller scales all 80 points are run. The reference's grid is its per-point time x 80.

Writes `benchmarks/results/sparsify_<scale>.csv` and `.md` (atomically). `run("tiny",
isolate=False)` is the smoke-test entry point.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.sparsity.grid import DEFAULT_LEVELS, GridPoint, default_grid
from lit_dlrm.sparsity.masks import prune_tables

DIM = 16
CAPS = {"kaggle": None, "small": 200_000, "tiny": 2_000}
RESULTS = Path(__file__).resolve().parent / "results"
COMBOS = [("L1", (1, 1)), ("L2", (1, 1)), ("L1", (1, 4)), ("L2", (1, 4))]


def table_sizes(scale: str) -> list[int]:
    cap = CAPS[scale]
    return [n if cap is None else min(n, cap) for n in KAGGLE_TABLE_SIZES]


def build_tables(sizes: list[int], dim: int = DIM, seed: int = 0,
                 chunk_rows: int = 1 << 18) -> list[torch.Tensor]:
    """Random tables like DLRM's init, U(-sqrt(1/n), sqrt(1/n)), without big temporaries."""
    g = torch.Generator().manual_seed(seed)
    tables = []
    for n in sizes:
        t = torch.empty(n, dim)  # (n, dim)
        a = (1.0 / n) ** 0.5
        for r0 in range(0, n, chunk_rows):
            part = t[r0 : r0 + chunk_rows]
            torch.rand(part.shape, generator=g, out=part)
            part.mul_(2 * a).sub_(a)
        tables.append(t)
    return tables


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------ stages


def stage_floor(tables):
    t0 = time.perf_counter()
    copies = [t.clone() for t in tables]
    dt = time.perf_counter() - t0
    del copies
    return dt


def stage_ours(tables, norm, block, level=0.5):
    t0 = time.perf_counter()
    out = prune_tables(tables, GridPoint(norm, block, level))
    dt = time.perf_counter() - t0
    del out
    return dt


def stage_reference(tables, norm, block, level=0.5):
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier

    sp = DataNormSparsifier(sparsity_level=level, sparse_block_shape=block, norm=norm)
    params = [torch.nn.Parameter(t, requires_grad=False) for t in tables]
    for i, p in enumerate(params):
        sp.add_data(f"emb_l_{i}", p)
    t0 = time.perf_counter()
    sp.step()
    sp.squash_mask()
    return time.perf_counter() - t0


def stage_grid(tables, full: bool):
    """Whole 80-point grid for lit_dlrm: measured, or extrapolated from 4 levels per combo."""
    if full:
        t0 = time.perf_counter()
        for p in default_grid():
            out = prune_tables(tables, p)
            del out
        return time.perf_counter() - t0, "all 80 points run"
    total = 0.0
    interior = len([lv for lv in DEFAULT_LEVELS if 0.0 < lv < 1.0])
    for norm, block in COMBOS:
        t = {lv: stage_ours(tables, norm, block, lv) for lv in (0.0, 0.5, 0.99, 1.0)}
        total += t[0.0] + t[1.0] + interior * (t[0.5] + t[0.99]) / 2
    return total, "extrapolated from levels 0, 0.5, 0.99, 1 per (norm, block)"


def run_stage(name: str, scale: str, full_grid: bool | None = None) -> dict:
    """Run one stage in this process: build the tables, time, report peak RSS."""
    torch.manual_seed(0)
    tables = build_tables(table_sizes(scale))
    rss_tables = _peak_rss_mib()
    note = ""
    if name == "floor":
        sec = stage_floor(tables)
    elif name.startswith("lit_dlrm"):
        _, norm, block = name.split()
        sec = stage_ours(tables, norm, _parse_block(block))
    elif name.startswith("reference"):
        _, norm, block = name.split()
        sec = stage_reference(tables, norm, _parse_block(block))
    elif name == "grid lit_dlrm":
        sec, note = stage_grid(tables, full=scale != "kaggle" if full_grid is None else full_grid)
    else:
        raise ValueError(f"unknown stage {name!r}")
    return {"stage": name, "seconds": sec, "peak_rss_mib": _peak_rss_mib(),
            "tables_rss_mib": rss_tables, "note": note}


def _parse_block(s: str) -> tuple[int, int]:
    h, w = s.split("x")
    return int(h), int(w)


def _run_isolated(name: str, scale: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--scale", scale]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ report


def run(scale: str = "small", out_dir: str | os.PathLike | None = RESULTS,
        isolate: bool = True, full_grid: bool | None = None) -> list[dict]:
    """Measure every stage and write the CSV + Markdown table; returns the rows."""
    sizes = table_sizes(scale)
    model_mib = sum(sizes) * DIM * 4 / 2**20
    if isolate:
        measure = lambda n: _run_isolated(n, scale)  # noqa: E731
    else:
        measure = lambda n: run_stage(n, scale, full_grid)  # noqa: E731
    floor = measure("floor")
    rows = []
    ref_cache: dict[tuple[int, int], dict] = {}
    for norm, block in COMBOS:
        b = f"{block[0]}x{block[1]}"
        ours = measure(f"lit_dlrm {norm} {b}")
        if scale == "kaggle" and block in ref_cache:  # norm does not change its cost
            ref, ref_note = ref_cache[block], f"measured with {ref_cache[block]['stage'].split()[1]}"
        else:
            ref, ref_note = measure(f"reference {norm} {b}"), ""
            ref_cache[block] = ref
        rows.append(_row(f"point {norm} {block}", ours["seconds"], ref["seconds"],
                         ours["peak_rss_mib"], ref["peak_rss_mib"], floor["seconds"], ref_note,
                         ours["peak_rss_mib"] - ours["tables_rss_mib"],
                         ref["peak_rss_mib"] - ref["tables_rss_mib"]))
    grid = measure("grid lit_dlrm")
    ref_point = sum(r["reference_s"] for r in rows) / len(rows)
    rows.append(_row("grid (80 points)", grid["seconds"], ref_point * 80, grid["peak_rss_mib"],
                     max(r["reference_peak_rss_mib"] for r in rows), floor["seconds"] * 80,
                     f"lit_dlrm {grid['note']}; reference = mean per point x 80",
                     grid["peak_rss_mib"] - grid["tables_rss_mib"],
                     max(r["reference_extra_mib"] for r in rows)))
    for r in rows:
        r.update(scale=scale, model_mib=round(model_mib, 1),
                 tables_rss_mib=round(floor["tables_rss_mib"], 1))
    if out_dir is not None:
        _write(rows, Path(out_dir), f"sparsify_{scale}")
    print(_markdown(rows, scale, model_mib, floor))
    return rows


def _row(stage, ours_s, ref_s, ours_rss, ref_rss, floor_s, note, ours_extra, ref_extra):
    """One table row; *_extra_mib = peak RSS minus RSS with the tables built (output included)."""
    return {"stage": stage, "lit_dlrm_s": round(ours_s, 3), "reference_s": round(ref_s, 3),
            "speedup": round(ref_s / ours_s, 1) if ours_s > 0 else float("nan"),
            "lit_dlrm_peak_rss_mib": round(ours_rss, 1),
            "reference_peak_rss_mib": round(ref_rss, 1),
            "lit_dlrm_extra_mib": round(ours_extra, 1), "reference_extra_mib": round(ref_extra, 1),
            "floor_s": round(floor_s, 3), "note": note}


def _markdown(rows, scale, model_mib, floor) -> str:
    head = (f"Sparsify one grid point, scale={scale}: 26 tables x {DIM}, {model_mib:.0f} MiB fp32; "
            f"level 0.5; torch {torch.__version__}, {torch.get_num_threads()} threads. Floor = clone "
            f"all tables ({floor['seconds']:.2f} s). Peak RSS = child's ru_maxrss, tables "
            f"included (process with tables alone: {floor['tables_rss_mib']:.0f} MiB); extra = "
            f"peak - that (pruned copies + temporaries).\n\n")
    cols = ["stage", "lit_dlrm_s", "reference_s", "speedup", "lit_dlrm_peak_rss_mib",
            "reference_peak_rss_mib", "lit_dlrm_extra_mib", "reference_extra_mib", "floor_s",
            "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write(rows: list[dict], out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    _atomic_write(out_dir / f"{stem}.csv", buf.getvalue())
    model_mib = rows[0]["model_mib"]
    floor = {"seconds": rows[0]["floor_s"], "tables_rss_mib": rows[0]["tables_rss_mib"]}
    _atomic_write(out_dir / f"{stem}.md", _markdown(rows, rows[0]["scale"], model_mib, floor))


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
