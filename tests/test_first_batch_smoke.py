"""benchmarks/first_batch.py runs end to end at a tiny scale (its figures are not checked)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "first_batch.py"


def test_first_batch_benchmark_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_first_batch", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "first_batch.md"
    args = ["--rows", "3000", "--max-table-size", "200", "--repeats", "5", "--out", str(out)]
    rows = mod.main(args)
    assert [r["source"] for r in rows] == [
        "dlrm_terabyte",
        "dlrm_bin",
        "torchrec_npy",
        "torchrec_npy_contiguous",
        "torchrec_multihot",
    ]
    assert all(0 < r["warm_min_s"] <= r["warm_median_s"] <= r["warm_max_s"] for r in rows)
    text = out.read_text()
    assert "- commit: " in text and "| dlrm_bin |" in text
