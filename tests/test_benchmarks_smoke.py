"""The benchmark harnesses run end to end at a tiny scale (their figures are not checked)."""

import importlib.util
from pathlib import Path

SCHEMA = {
    "stage",
    "unit",
    "lit_dlrm",
    "reference",
    "ratio",
    "lit_dlrm_peak_mib",
    "reference_peak_mib",
    "floor",
    "note",
}
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sparsify_benchmark_tiny(tmp_path):
    rows = load("sparsify").run("tiny", out_dir=tmp_path, isolate=False)
    assert [r["stage"] for r in rows][-1] == "grid (80 points)" and len(rows) == 6
    assert all(set(r) == SCHEMA for r in rows)
    assert all(r["lit_dlrm"] > 0 and r["reference"] > 0 for r in rows[1:])
    assert (tmp_path / "sparsify_tiny.csv").exists() and (tmp_path / "sparsify_tiny.md").exists()


def test_compress_benchmark_tiny(tmp_path):
    rows = load("compress").run("tiny", out_dir=tmp_path, workdir=str(tmp_path), levels=(0.0, 1.0))
    assert all(set(r) == SCHEMA for r in rows) and len(rows) == 8  # 2 levels x 2 zeros x write/read
    assert rows[0]["stage"] == "compress 0 write" and rows[0]["reference"] > 0
    assert (tmp_path / "compress_tiny.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compress_tiny.csv", "compress_tiny.md"]


def test_harness_runs_every_benchmark_into_one_table(tmp_path):
    rows = load("run").main(
        ["--scale", "tiny", "--only", "train", "evaluate", "--out-dir", str(tmp_path)]
    )
    stages = [r["stage"] for r in rows]
    assert "train batch 128" in stages and "test loop (one grid point)" in stages
    assert all(r["lit_dlrm"] > 0 and r["reference"] > 0 for r in rows)
    table = (tmp_path / "run_tiny.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # a header and one line per stage
    assert (tmp_path / "run_tiny.csv").exists()


def test_global_threshold_benchmark_tiny(tmp_path):
    rows = load("global_threshold").run(
        "tiny", out_dir=tmp_path, isolate=False
    )  # counts compared inside
    assert all(set(r) == SCHEMA for r in rows) and len(rows) == 4
    assert rows[0]["lit_dlrm"] > 0 and rows[0]["reference"] > 0
    assert (tmp_path / "global_threshold_tiny.md").exists()


def test_quantize_benchmark_tiny(tmp_path):
    rows = load("quantize").run("tiny", out_dir=tmp_path, isolate=False)
    assert all(set(r) == SCHEMA for r in rows) and len(rows) == 2
    assert all(r["lit_dlrm"] > 0 and r["reference"] > 0 for r in rows)


def test_int_lookup_benchmark_tiny(tmp_path):
    rows = load("int_lookup").run("tiny", out_dir=tmp_path)
    assert {r["path"] for r in rows} == {"float32", "int8", "int4"} and len(rows) == 6
    assert all(r["min_s"] <= r["median_s"] <= r["max_s"] for r in rows)
    assert (tmp_path / "int_lookup_tiny.csv").exists() and (
        tmp_path / "int_lookup_tiny.md"
    ).exists()
