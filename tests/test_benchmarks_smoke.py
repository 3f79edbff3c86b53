"""The benchmark harness: ABBA order, spreads, same-work checks (which fail when the sides
differ), one results writer; and a few benchmarks end to end at a tiny scale (figures unchecked)."""

import time

import pytest
import torch

from benchmarks import harness, run, sparsify
from benchmarks.harness import OURS, REF, Sample, WorkMismatch


def test_alternate_runs_the_sides_abba():
    order = []
    sides = {name: (lambda n=name: order.append(n) or Sample(1.0)) for name in (OURS, REF)}
    samples = harness.alternate(sides, 4)
    assert order == [OURS, REF, REF, OURS, OURS, REF, REF, OURS]
    assert [len(v) for v in samples.values()] == [4, 4]


def test_timed_seconds_count_the_timed_rounds_and_not_the_warmups():
    calls = []

    def side():  # the 6 warm-up runs sleep 0.1 s each, the 4 timed runs 0.02 s
        calls.append(None)
        time.sleep(0.1 if len(calls) <= 6 else 0.02)
        return Sample(1.0)

    before = harness.timed_seconds()
    harness.alternate({OURS: side, REF: side}, 2, warmup=3)
    assert 0.08 <= harness.timed_seconds() - before < 0.08 + 6 * 0.1


def test_compare_reports_medians_spreads_ratio_and_a_missed_target():
    samples = {
        OURS: [Sample(v, 10.0) for v in (1.0, 3.0, 2.0)],
        REF: [Sample(v, 20.0) for v in (4.0, 5.0, 6.0)],
    }
    row = harness.compare("s", "s", samples, target=3.0)
    assert (row[OURS], row[f"{OURS}_min"], row[f"{OURS}_max"]) == (2.0, 1.0, 3.0)
    assert row["ratio"] == 2.5 and row["target"] == "ratio >= 3: missed"
    assert row["lit_dlrm_peak_mib"] == 10.0 and row["runs"] == 3
    rate = harness.compare("r", "rows/s", samples, better="higher", target=0.3)
    assert rate["ratio"] == 0.4 and rate["target"].endswith("met")
    assert "2 [1, 3]" in harness.markdown_table([row])


def test_same_work_check_fails_when_a_side_differs():
    same = {OURS: [Sample(1, work=[1, 2])], REF: [Sample(1, work=[1, 2])]}
    harness.check_same_work("stage", same)
    other = {OURS: [Sample(1, work=[1, 2])], REF: [Sample(1, work=[1, 3])]}
    with pytest.raises(WorkMismatch, match="run 0 of reference"):
        harness.check_same_work("stage", other)


def test_sparsify_fails_when_the_reference_prunes_other_blocks(monkeypatch):
    real = sparsify.reference_point

    def wrong(tables, norm, block, work):
        sample = real(tables, norm, block, work)
        sample.work = sample.work[1:] + sample.work[:1]
        return sample

    monkeypatch.setattr(sparsify, "reference_point", wrong)
    with pytest.raises(WorkMismatch, match="one point L1"):
        sparsify.run("tiny", 1)


def test_sparsify_lets_ties_at_the_cut_differ_and_nothing_else():
    dense = [torch.tensor([[1.0], [2.0], [-2.0], [3.0], [0.5]])]  # scores 1 2 2 3 0.5, cut 2

    def pruned(*rows):
        t = dense[0].clone()
        t[list(rows)] = 0
        return [t]

    work = sparsify.mask_work(dense, "L1", (1, 1))
    lower = work(pruned(4, 0, 1))  # lit_dlrm: the lower index of the tie at 2
    assert work(pruned(4, 0, 2)) == lower  # the other tied block: allowed
    assert work(pruned(4, 1, 2)) != lower  # keeps 1 (below the cut), prunes both ties
    assert work(pruned(4, 0, 3)) != lower  # a block above the cut: another cut score
    assert work(pruned(4, 0)) != lower  # fewer zeros


def test_a_peak_counts_memory_reused_from_an_earlier_run():
    n = 4 << 20  # 16 MiB of float32
    for _ in range(3):  # freed memory the heap keeps, which a run could reuse unseen
        a, b = torch.ones(n), torch.ones(n)
        del a, b
    _, _, peak = harness.measured(lambda: float((torch.ones(n) + 1).sum()))  # two 16 MiB live
    assert peak is not None and peak >= 0.9 * 32


def test_results_file_has_its_run_table_and_one_table_of_rows(tmp_path):
    rows = [{"benchmark": "b", **harness.compare("s", "s", {OURS: [Sample(1.0)]})}]
    text = harness.write_results("x", "title", rows, "python -m benchmarks.x", tmp_path, 12.0)
    assert (tmp_path / "x.md").read_text() == text and (tmp_path / "x.csv").exists()
    for field in (
        "| command | `python -m benchmarks.x` |",
        "| commit |",
        "| duration | 12 s |",
        "| repeats | 1 per side",  # as run (the row's runs), not the scale's default
    ):
        assert field in text
    assert "CPUs, torch" in text


def test_run_writes_one_file_per_run_with_the_reference_grid_of_60(tmp_path):
    rows = run.main(
        ["--scale", "tiny", "--only", "sparsify", "--repeats", "2", "--out-dir", str(tmp_path)]
        + ["--no-readme"]
    )
    grid = next(r for r in rows if r["stage"].startswith("grid"))
    points = [r for r in rows if r["stage"].startswith("one point") and r["reference"]]
    assert len(points) == 3 and sparsify.REFERENCE_POINTS == 60
    assert grid["reference"] == pytest.approx(20 * sum(r["reference"] for r in points))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run_tiny_sparsify.csv",
        "run_tiny_sparsify.md",
    ]
    text = (tmp_path / "run_tiny_sparsify.md").read_text()
    assert "| by benchmark | wall (of it in timed runs); " in text and ": sparsify " in text


@pytest.mark.parametrize("name", ["compress", "quantize", "global_threshold", "train_throughput"])
def test_benchmark_runs_at_tiny_scale_with_its_checks(name):
    module = __import__(f"benchmarks.{name}", fromlist=["run"])
    rows = module.run("tiny", 2)
    assert rows and all(r["lit_dlrm"] > 0 and r["runs"] == 2 for r in rows)
