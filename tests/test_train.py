"""The training CLI end to end on tiny synthetic data: TensorBoard curves, reloadable checkpoint."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dlrm.checkpoint import latest_checkpoint
from lit_dlrm.cli import train
from lit_dlrm.module import DLRMModule


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_data_args):
    root = tmp_path_factory.mktemp("train")
    train(
        [
            *tiny_data_args,
            "--trainer.max_epochs=2",
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=2",
            "--trainer.val_check_interval=0.5",
        ]
    )
    return root / "train" / "version_0"


def scalars(run_dir) -> dict[str, list]:
    """Every scalar series of the run, read back with TensorBoard's own event reader."""
    series: dict[str, list] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend(acc.Scalars(tag))
    return series


def test_fit_writes_tensorboard_curves_and_hparams(run_dir):
    series = scalars(run_dir)
    expected = {
        "train/loss",
        "train/auc",
        "val/auc",
        "val/log_loss",
        "val/ne",
        "val/calibration",
        "test/auc",
        "hp/val_auc",
    }
    assert expected <= set(series)
    assert len(series["train/loss"]) >= 5  # a curve, not a point
    assert len(series["val/auc"]) == 4  # two per epoch
    assert (run_dir / "hparams.yaml").read_text().count("table_sizes") == 1


def test_best_checkpoint_reloads_and_resumes(run_dir, tiny_data_args, capsys):
    best = latest_checkpoint(run_dir.parent)
    assert best.parent == run_dir / "checkpoints"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # written after every epoch, improved or not
    model = DLRMModule.from_weights(best).model
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["callbacks"]  # a Lightning checkpoint, selected on validation
    torch.testing.assert_close(
        model.state_dict()["top_l.0.weight"], ckpt["state_dict"]["model.top_l.0.weight"]
    )
    # resuming from last.ckpt continues the epoch count
    train(
        [
            *tiny_data_args,
            "--trainer.max_epochs=3",
            f"--trainer.logger.init_args.save_dir={run_dir.parents[1]}",
            "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=0.5",
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    out = capsys.readouterr().out
    assert "teacher (Bayes)" in out and "best checkpoint:" in out
    # the resumed run continues in the same version, with the best score of the whole run
    assert not (run_dir.parent / "version_1").exists()
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # one best, one last


def test_bad_option_is_named(tiny_data_args, capsys):
    with pytest.raises(SystemExit):
        train([*tiny_data_args, "--model.optimizer=adam_typo"])
    assert "optimizer" in capsys.readouterr().err
