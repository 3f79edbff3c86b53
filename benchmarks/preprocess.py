"""Preprocessing benchmark: lit_dlrm's vectorised streaming preprocessing vs line-by-line Python.

Generates a Kaggle-format `train.txt` with the synthetic writer (tables at the Kaggle sizes capped
at --max-table-size), then, each in a fresh subprocess so peak RSS is that run's alone:
  * lit_dlrm: `preprocess_text` (parse, clip, first-appearance ids, splits) into a cache directory;
  * line-by-line, dlrm style: the same rules coded the way facebookresearch/dlrm's data_utils.py
    codes them (count lines, preallocate, split on TAB, np.array per row, int(x, 16), a dict per
    feature, an element loop to renumber), on the first --line-rows rows (the rates are compared);
  * line-by-line, tight: the fastest plain per-line Python we wrote for the same rules.
With --scale-check, lit_dlrm also runs on a 4x larger file (default 8M rows: the generated file
repeated, so the same distinct values) to show that peak RSS does not grow with the row count.
Prints a table; writes CSV + Markdown to benchmarks/results/.

    python -m benchmarks.preprocess --rows 2000000 --scale-check    # from the checkout's root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import peak_rss_mib
from benchmarks.tables import write_results

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
# children (run in their own process)


def child_lit(path: str, out: str) -> dict:
    from lit_dlrm.data.preprocess import PreprocessOptions, preprocess_text

    t, c = time.perf_counter(), time.process_time()
    meta = preprocess_text(path, Path(out), PreprocessOptions(), progress=False)
    return {
        "rows": meta["rows"],
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - c,
    }


def _count_lines(path: str, limit: int) -> int:
    n = 0
    with open(path) as f:
        for _ in f:
            n += 1
            if n >= limit:
                break
    return n


def child_dlrm_style(path: str, limit: int) -> dict:
    """The rules the way facebookresearch/dlrm's data_utils.py codes them (our rewrite, not its
    code): count lines, preallocate, per line: split, '' -> '0', np.array(..., int32) for the
    integers, int(x, 16) via map for the hashes, a dict per feature to collect values; then a
    second loop over the elements renumbering them by first appearance; negatives -> 0."""
    t, c = time.perf_counter(), time.process_time()
    n = _count_lines(path, limit)
    y = np.zeros(n, dtype=np.int32)
    x_int = np.zeros((n, 13), dtype=np.int32)
    x_cat = np.zeros((n, 26), dtype=np.int64)
    dicts = [dict() for _ in range(26)]
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            line = line.split("\t")
            for j in range(len(line)):
                if line[j] == "" or line[j] == "\n":
                    line[j] = "0"
            y[i] = np.int32(line[0])
            x_int[i] = np.array(line[1:14], dtype=np.int32)
            x_cat[i] = np.array(list(map(lambda x: int(x, 16), line[14:])), dtype=np.int64)
            for j in range(26):
                dicts[j][x_cat[i][j]] = 1
    for j in range(26):  # ids in first-appearance order (dicts keep insertion order)
        for k, key in enumerate(dicts[j]):
            dicts[j][key] = k
        for k, x in enumerate(x_cat[:, j]):
            x_cat[k, j] = dicts[j][x]
    x_int[x_int < 0] = 0
    return {"rows": n, "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}


def child_line_by_line(path: str, limit: int) -> dict:
    """A tighter line-by-line loop (list comprehensions, dict.setdefault): the fastest plain
    per-line Python we wrote for the same rules."""
    t, c = time.perf_counter(), time.process_time()
    n = _count_lines(path, limit)
    y = np.zeros(n, dtype=np.uint8)
    x_int = np.zeros((n, 13), dtype=np.int32)
    x_cat = np.zeros((n, 26), dtype=np.int64)
    dicts = [dict() for _ in range(26)]
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 40:
                raise ValueError(f"line {i + 1}: {len(fields)} fields")
            y[i] = int(fields[0])
            x_int[i] = [max(int(v), 0) if v else 0 for v in fields[1:14]]
            x_cat[i] = [
                d.setdefault(int(v, 16) if v else 0, len(d)) for d, v in zip(dicts, fields[14:])
            ]
    return {"rows": n, "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}


def run_child(args: list[str]) -> dict:
    """Run this script in a fresh process; return its JSON result (with its own peak RSS, MiB)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.preprocess", *args],
        stdout=subprocess.PIPE,
        cwd=HERE.parent,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with status {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def make_file(rows: int, max_table_size: int, path: Path) -> float:
    from lit_dlrm.data.synthetic import SyntheticConfig, write_tsv

    t = time.perf_counter()
    write_tsv(SyntheticConfig(rows=rows, max_table_size=max_table_size, seed=1), path)
    return time.perf_counter() - t


def _row(impl: str, file_rows: int, r: dict) -> dict:
    return {
        "impl": impl,
        "file_rows": file_rows,
        "rows": r["rows"],
        "seconds": round(r["seconds"], 2),
        "rows_per_s": round(r["rows"] / r["seconds"]),
        "cpu_seconds": round(r["cpu_seconds"], 2),
        "rows_per_cpu_s": round(r["rows"] / r["cpu_seconds"]),
        "peak_rss_mib": round(r["peak_rss_mib"], 1),
    }


def measure(
    rows: int,
    line_rows: int,
    scale_check: bool,
    scale_rows: int | None,
    max_table_size: int,
    workdir: str | None,
    verbose: bool = True,
) -> list[dict]:
    """Generate the file, run each implementation in a fresh process; one dict per run."""
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    work = Path(tmp.name)
    copies = max(1, (scale_rows or 4 * rows) // rows)
    sizes = [rows] + ([rows * copies] if scale_check else [])
    rows_out = []
    base = work / f"train-{rows}.txt"
    gen = make_file(rows, max_table_size, base)
    verbose and print(
        f"generated {base.name}: {rows:,} rows, "
        f"{base.stat().st_size / 2**20:,.0f} MiB in {gen:.1f} s",
        flush=True,
    )
    for n in sizes:
        f = work / f"train-{n}.txt"
        if n != rows:  # the scale-check file: the base file repeated (same distinct values)
            with open(f, "wb") as out_f:
                for _ in range(copies):
                    with open(base, "rb") as in_f:
                        while chunk := in_f.read(64 << 20):
                            out_f.write(chunk)
        lit = run_child(["--child", "lit", str(f), str(work / f"cache-{n}")])
        rows_out.append(_row("lit_dlrm", n, lit))
        verbose and print(rows_out[-1], flush=True)
        if n == rows:
            for kind, label in (
                ("dlrm", "line-by-line, dlrm data_utils style"),
                ("line", "line-by-line, tight Python"),
            ):
                rows_out.append(
                    _row(label, n, run_child(["--child", kind, str(f), str(line_rows)]))
                )
                verbose and print(rows_out[-1], flush=True)
        if n != rows:
            f.unlink()

    tmp.cleanup()
    return rows_out


# scale: (file rows, rows for the line-by-line baselines, run the 4x scale check)
SCALES = {
    "tiny": (20_000, 5_000, False),
    "small": (2_000_000, 200_000, False),
    "kaggle": (2_000_000, 200_000, True),
}


def run(scale: str = "small") -> list[dict]:
    """Rows for benchmarks/run.py: lit_dlrm against each line-by-line baseline, the RSS check."""
    rows, line_rows, scale_check = SCALES[scale]
    out = measure(rows, line_rows, scale_check, None, 100_000, None, verbose=False)
    lit, big = out[0], out[-1]
    table = [
        {
            "stage": f"preprocess vs {r['impl']}",
            "unit": "rows/s",
            "lit_dlrm": lit["rows_per_s"],
            "reference": r["rows_per_s"],
            "ratio": lit["rows_per_s"] / r["rows_per_s"],
            "lit_dlrm_peak_mib": lit["peak_rss_mib"],
            "reference_peak_mib": r["peak_rss_mib"],
            "note": f"{rows:,}-row Kaggle-format file; "
            f"the baseline on its first {r['rows']:,} rows",
        }
        for r in out
        if r["impl"].startswith("line")
    ]
    if scale_check:
        table.append(
            {
                "stage": "preprocess peak RSS, 4x rows",
                "unit": "MiB",
                "lit_dlrm": big["peak_rss_mib"],
                "reference": lit["peak_rss_mib"],
                "ratio": lit["peak_rss_mib"] / big["peak_rss_mib"],
                "note": f"lit_dlrm at {big['file_rows']:,} rows vs {lit['file_rows']:,} rows "
                "(target: within 20%)",
            }
        )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument(
        "--line-rows", type=int, default=200_000, help="rows given to the line-by-line baseline"
    )
    ap.add_argument(
        "--scale-check", action="store_true", help="also run lit_dlrm on 4x --rows for peak RSS"
    )
    ap.add_argument(
        "--scale-rows", type=int, default=None, help="rows of the scale check (default 4x --rows)"
    )
    ap.add_argument("--max-table-size", type=int, default=100_000)
    ap.add_argument(
        "--workdir", default=None, help="where the generated files go (default: a temp dir)"
    )
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        kind, path, extra = a.child
        res = {
            "lit": lambda: child_lit(path, extra),
            "dlrm": lambda: child_dlrm_style(path, int(extra)),
            "line": lambda: child_line_by_line(path, int(extra)),
        }[kind]()
        res["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(res))
        return

    rows_out = measure(
        a.rows, a.line_rows, a.scale_check, a.scale_rows, a.max_table_size, a.workdir
    )
    lit0 = rows_out[0]
    base_rows = [r for r in rows_out if r["impl"].startswith("line")]
    lines = [
        f"# Preprocessing benchmark ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        f"Kaggle-format file from the synthetic writer (tables capped at {a.max_table_size:,}); "
        "each run in a fresh process.",
        "",
        "| implementation | file rows | rows processed | seconds | rows/s | CPU s "
        "| rows per CPU s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows_out:
        lines.append(
            f"| {r['impl']} | {r['file_rows']:,} | {r['rows']:,} | {r['seconds']} "
            f"| {r['rows_per_s']:,} | "
            f"{r['cpu_seconds']} | {r['rows_per_cpu_s']:,} | {r['peak_rss_mib']} |"
        )
    lines.append("")
    for r in base_rows:
        lines.append(
            f"Speed-up over {r['impl']}: {lit0['rows_per_s'] / r['rows_per_s']:.1f}x in rows/s "
            f"(target >= 10x); {lit0['rows_per_cpu_s'] / r['rows_per_cpu_s']:.1f}x per CPU second "
            "(lit_dlrm parses on 2 threads)."
        )
    if a.scale_check:
        big = rows_out[-1]
        growth = big["peak_rss_mib"] / lit0["peak_rss_mib"] - 1
        lines.append(
            f"Peak RSS at {big['file_rows']:,} rows vs {lit0['file_rows']:,}: {growth:+.1%} "
            "(target within 20%)."
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    write_results(a.out_dir, "preprocess", rows_out, text)


if __name__ == "__main__":
    main()
