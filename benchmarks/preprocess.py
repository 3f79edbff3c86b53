"""Preprocessing benchmark: lit_dlrm's vectorised streaming preprocessing vs line-by-line Python.

Generates a Kaggle-format `train.txt` with the synthetic writer (tables at the Kaggle sizes capped
at --max-table-size), then, each in a fresh subprocess so peak RSS is that run's alone:
  * lit_dlrm: `preprocess_text` (parse, clip, first-appearance ids, splits) into a cache directory;
  * line-by-line: the same rules the way facebookresearch/dlrm's data_utils.py does them (count
    lines, preallocate, split on TAB, int(x, 16), one dict per feature), on the first --line-rows
    rows (it is slow; the rates are compared).
With --scale-check, lit_dlrm also runs on a 4x larger file (default 8M rows) to show that peak RSS
does not grow with the row count. Prints a table; writes CSV + Markdown to benchmarks/results/.

    python benchmarks/preprocess.py --rows 2000000 --scale-check
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
# children (run in their own process)


def child_lit(path: str, out: str) -> dict:
    from lit_dlrm.data.preprocess import PreprocessOptions, preprocess_text

    t = time.perf_counter()
    meta = preprocess_text(path, Path(out), PreprocessOptions(), progress=False)
    return {"rows": meta["rows"], "seconds": time.perf_counter() - t}


def child_line_by_line(path: str, limit: int) -> dict:
    """dlrm data_utils.py style: one Python loop over lines, a dict per feature."""
    t = time.perf_counter()
    n = 0
    with open(path) as f:
        for _ in f:
            n += 1
            if n >= limit:
                break
    y = np.zeros(n, dtype=np.uint8)
    x_int = np.zeros((n, 13), dtype=np.int32)
    x_cat = np.zeros((n, 26), dtype=np.int64)
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 40:
                raise ValueError(f"line {i + 1}: {len(fields)} fields")
            y[i] = int(fields[0])
            x_int[i] = [max(int(v), 0) if v else 0 for v in fields[1:14]]
            x_cat[i] = [int(v, 16) if v else 0 for v in fields[14:]]
    dicts = [dict() for _ in range(26)]
    for i in range(n):
        for j in range(26):
            d = dicts[j]
            v = x_cat[i, j]
            x_cat[i, j] = d.setdefault(v, len(d))
    return {"rows": n, "seconds": time.perf_counter() - t}


def _vm_hwm_mib() -> float:
    """This process's peak RSS (VmHWM). Read in the child itself: ru_maxrss of a forked child
    would include the parent's RSS from before exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str]) -> dict:
    """Run this script in a fresh process; returns its JSON result (with its own peak RSS, MiB)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with status {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def make_file(rows: int, max_table_size: int, path: Path) -> float:
    sys.path.insert(0, str(HERE.parent))
    from lit_dlrm.data.synthetic import SyntheticConfig, write_tsv

    t = time.perf_counter()
    write_tsv(SyntheticConfig(rows=rows, max_table_size=max_table_size, seed=1), path)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--line-rows", type=int, default=200_000, help="rows given to the line-by-line baseline")
    ap.add_argument("--scale-check", action="store_true", help="also run lit_dlrm on 4x --rows for peak RSS")
    ap.add_argument("--scale-rows", type=int, default=None, help="rows of the scale check (default 4x --rows)")
    ap.add_argument("--max-table-size", type=int, default=100_000)
    ap.add_argument("--workdir", default=None, help="where the generated files go (default: a temp dir)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        kind, path, extra = a.child
        res = child_lit(path, extra) if kind == "lit" else child_line_by_line(path, int(extra))
        res["peak_rss_mib"] = _vm_hwm_mib()
        print(json.dumps(res))
        return

    tmp = tempfile.TemporaryDirectory(dir=a.workdir)
    work = Path(tmp.name)
    sizes = [a.rows] + ([a.scale_rows or 4 * a.rows] if a.scale_check else [])
    rows_out = []
    for n in sizes:
        f = work / f"train-{n}.txt"
        gen = make_file(n, a.max_table_size, f)
        mb = f.stat().st_size / 2**20
        print(f"generated {f.name}: {n:,} rows, {mb:,.0f} MiB in {gen:.1f} s", flush=True)
        lit = run_child(["--child", "lit", str(f), str(work / f"cache-{n}")])
        rows_out.append({"impl": "lit_dlrm", "file_rows": n, "rows": lit["rows"], "seconds": round(lit["seconds"], 2),
                         "rows_per_s": round(lit["rows"] / lit["seconds"]), "peak_rss_mib": round(lit["peak_rss_mib"], 1)})
        print(rows_out[-1], flush=True)
        if n == a.rows:
            line = run_child(["--child", "line", str(f), str(a.line_rows)])
            rows_out.append({"impl": "line-by-line (dlrm style)", "file_rows": n, "rows": line["rows"], "seconds": round(line["seconds"], 2),
                             "rows_per_s": round(line["rows"] / line["seconds"]), "peak_rss_mib": round(line["peak_rss_mib"], 1)})
            print(rows_out[-1], flush=True)
        f.unlink()

    lit0 = rows_out[0]
    line0 = next(r for r in rows_out if r["impl"].startswith("line"))
    speedup = lit0["rows_per_s"] / line0["rows_per_s"]
    lines = [
        f"# Preprocessing benchmark ({platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})",
        "",
        f"Kaggle-format file from the synthetic writer (tables capped at {a.max_table_size:,}); each run in a fresh process.",
        "",
        "| implementation | file rows | rows processed | seconds | rows/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows_out:
        lines.append(f"| {r['impl']} | {r['file_rows']:,} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,} | {r['peak_rss_mib']} |")
    lines += ["", f"Speed-up over line-by-line: {speedup:.1f}x (target >= 10x)."]
    if a.scale_check:
        big = rows_out[-1]
        growth = big["peak_rss_mib"] / lit0["peak_rss_mib"] - 1
        lines.append(f"Peak RSS at {big['file_rows']:,} rows vs {lit0['file_rows']:,}: {growth:+.1%} (target within 20%).")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "preprocess.csv.part", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    os.replace(out / "preprocess.csv.part", out / "preprocess.csv")
    (out / "preprocess.md.part").write_text(text)
    os.replace(out / "preprocess.md.part", out / "preprocess.md")


if __name__ == "__main__":
    main()
