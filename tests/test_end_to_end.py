"""benchmarks/end_to_end.py at CI size: the whole job on a 200,000-line Kaggle-shaped file, each
stage's row, the sweep's floor, and a second sweep of the same checkpoint that runs alone."""

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import reference_point
from benchmarks.end_to_end import REFERENCE, STAGES, main, reference_summary
from lit_dlrm.cli import sweep, train
from lit_dlrm.sweep.results import FORWARD_TIME_CSV, METADATA_CSV, METRICS_CSV, read_table

SWEEP = "--sweep.studies=[] --sweep.norm=[L1] --sweep.sparse_block_shape=[[1,4]] "
SWEEP += "--sweep.sparsity_level=[0.5,0.9] --timing.repeats=2"
# the reference stage's 2 x 100 forward passes of 16384 rows per point take minutes: tested below
# on a small model
WITHOUT_REFERENCE = [s for s in STAGES if s != "reference"]


def end_to_end(work: Path, out: Path, *more: str, sweep: str = SWEEP) -> None:
    """The command, in this process (its stages run as their own processes either way)."""
    main(
        [
            "--lines=200000",
            "--train-steps=150",
            f"--work={work}",
            f"--out-dir={out}",
            f"--sweep-args={sweep}",
            *more,
        ]
    )


def test_the_whole_job_on_a_small_kaggle_file_then_a_second_sweep_only(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    end_to_end(work, out, "--stages", *WITHOUT_REFERENCE)
    stages = json.loads((work / "stages.json").read_text())
    assert list(stages) == WITHOUT_REFERENCE
    for row in stages.values():
        assert row["wall_s"] > 0 and row["disk_gib"] > 0, row
        assert row["peak_rss_mib"] >= row["peak_anon_mib"] > 0, row
        assert not row["resumed"] and str(work) not in row["command"]
    metrics = read_table(work / "sweep", METRICS_CSV)
    assert len(metrics) == 2 and metrics.roc_auc.between(0.5, 1).all()
    text = (out / "end_to_end_200000.md").read_text()
    assert "`sweep` ran 2 tests: F = " in text and str(tmp_path) not in text
    # a second sweep of the same checkpoint: only it runs, the other rows are kept
    no_zip = f"{SWEEP} --compression.reference_zip=false"  # the same 2 points, no zip
    end_to_end(work, out, "--stages", "sweep", "--sweep-name=sweep_no_zip", sweep=no_zip)
    again = json.loads((work / "stages.json").read_text())
    assert {k: again[k] for k in stages} == stages and list(again)[-1] == "sweep_no_zip"
    metadata = read_table(work / "sweep_no_zip", METADATA_CSV)
    assert metadata.zip_file_size.astype(str).isin(["", "nan"]).all()  # left empty
    assert (metadata.zstd_sparse_bytes > 0).all()
    text = (out / "end_to_end_200000.md").read_text()
    assert "`sweep_no_zip` ran 2 tests" in text and "| sweep_no_zip |" in text


def test_synthetic_takes_no_file_options(tmp_path, capsys):
    for wrong in (["--lines=5"], ["--stages", "write", "train"]):
        with pytest.raises(SystemExit):
            main(["--synthetic", f"--work={tmp_path}", *wrong])
        assert "there is no file with --synthetic" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_reference_points_score_as_the_sweep_does(tmp_path, tiny_data_args, monkeypatch):
    """The reference approach's points (DataNormSparsifier, its test loop) on a small trained
    checkpoint: the AUC of the sweep's same points, so the summary sets the two side by side. A
    run stopped after its first point is taken up at the second."""
    runs = tmp_path / "runs"
    train(
        [*tiny_data_args, "--trainer.max_steps=20", f"--trainer.logger.init_args.save_dir={runs}"]
    )
    (best,) = (runs / "train" / "version_0" / "checkpoints").glob("best-*.ckpt")
    grid = ["--sweep.studies=[]", "--sweep.sparsity_level=[0.9]", "--timing.repeats=1"]
    sweep([*grid, f"--ckpt_path={best}", f"--out_dir={tmp_path / 'sweep'}"])
    tests, real_test = [], reference_point.reference_test

    def stopped_at_the_second(*args):
        tests.append(args)
        if len(tests) == 2:
            raise KeyboardInterrupt
        return real_test(*args)

    command = [str(best), f"--out={tmp_path / REFERENCE}", "--levels", "0.9"]
    monkeypatch.setattr(reference_point, "reference_test", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        reference_point.main(command)
    (first,) = json.loads((tmp_path / REFERENCE).read_text())["points"]
    reference_point.main(command)  # tests the second and third points only
    assert len(tests) == 4
    ref = json.loads((tmp_path / REFERENCE).read_text())
    assert ref["points"][0] == first
    with pytest.raises(ValueError, match="holds the points of another measurement.*levels"):
        reference_point.main([*command[:-1], "0.5"])
    assert [(p["norm"], p["sparse_block_shape"]) for p in ref["points"]] == [
        ("L1", "(1, 1)"),
        ("L1", "(1, 4)"),
        ("L2", "(1, 4)"),
    ]
    assert ref["grid_s"] == pytest.approx(20 * sum(p["point_s"] for p in ref["points"]))
    text = reference_summary(tmp_path, {"sweep": {"wall_s": 1.0}})
    assert "its 60 points: " in text and "`sweep` ran 3 of the reference's points" in text
    assert "(AUC at its 3 measured points within " in text


def test_the_ratio_to_the_reference_needs_the_same_auc_at_its_points(tmp_path):
    point = {"norm": "L1", "sparse_block_shape": "(1, 4)", "sparsity_level": 0.5, "roc_auc": 0.75}
    steps = {"sparsify_s": 50.0, "zip_s": 60.0, "test_s": 70.0, "forward_s": 80.0}
    ref = {"points": [{**point, **steps, "point_s": 260.0}], "levels": [0.5], "grid_points": 60}
    ref.update({"grid_s": 15600.0, "test_rows": 100, "workers": 7, "threads": 2})
    (tmp_path / REFERENCE).write_text(json.dumps(ref))
    (tmp_path / "sweep").mkdir()
    timed = {**point, "repeats": 10, "batch_size": 1024}
    pd.DataFrame([timed]).to_csv(tmp_path / "sweep" / FORWARD_TIME_CSV)

    def sweep(auc: float, zip_size: str) -> str:
        pd.DataFrame([{**point, "roc_auc": auc}]).to_csv(tmp_path / "sweep" / METRICS_CSV)
        pd.DataFrame([{**point, "zip_file_size": zip_size}]).to_csv(
            tmp_path / "sweep" / METADATA_CSV
        )
        return reference_summary(tmp_path, {"sweep": {"wall_s": 26.0}})

    ran = "`sweep` ran 1 of the reference's points with its columns in 26 s (its forward times: "
    ran += "10 runs of 1,024 rows per path); the reference takes "
    assert ran + "260 s for them: 10.0x (AUC at its 1 measured points within 4.0e-04)." in sweep(
        0.7504, "12"
    )
    assert "`sweep`" not in sweep(0.75, "")  # no zip: not the reference's columns
    with pytest.raises(AssertionError, match="AUC differs from the reference's by 0.0100"):
        sweep(0.76, "12")
