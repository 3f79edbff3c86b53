"""The benchmark harnesses run end to end at a tiny scale (their figures are not checked)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sparsify_benchmark_tiny(tmp_path):
    rows = load("sparsify").run("tiny", out_dir=tmp_path, isolate=False, full_grid=False)
    assert [r["stage"] for r in rows][-1] == "grid (80 points)" and len(rows) == 5
    assert all(r["lit_dlrm_s"] > 0 and r["reference_s"] > 0 for r in rows)
    assert (tmp_path / "sparsify_tiny.csv").exists() and (tmp_path / "sparsify_tiny.md").exists()


def test_compress_benchmark_tiny(tmp_path):
    rows = load("compress").run("tiny", out_dir=tmp_path, workdir=str(tmp_path), levels=(0.0, 1.0))
    assert {r["format"] for r in rows} == {"torch.save+deflate", "sparse-shuffle-zstd"}
    assert (tmp_path / "compress_tiny.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compress_tiny.csv", "compress_tiny.md"]
