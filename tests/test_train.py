"""The training CLI end to end on tiny synthetic data: TensorBoard curves, reloadable checkpoint."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dlrm.checkpoint import latest_checkpoint
from lit_dlrm.cli import train
from lit_dlrm.data import CriteoDataModule
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


class SeenBatches(L.Callback):
    """(epoch, batch index, the batch's rows' fingerprint) of every training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        dense, sparse, label = batch
        self.seen.append((trainer.current_epoch, batch_idx, int(sparse.sum()) + len(label)))


def fit_seen(cache: str, ckpt_path=None, callbacks=(), batch_size=512, **trainer_options) -> list:
    data = CriteoDataModule(
        synthetic_rows=14000, max_table_size=300, batch_size=batch_size, cache_dir=cache
    )
    seen = SeenBatches()
    trainer = L.Trainer(
        callbacks=[seen, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **trainer_options,
    )
    trainer.fit(DLRMModule(), datamodule=data, ckpt_path=ckpt_path)
    return seen.seen


def test_training_resumed_mid_epoch_goes_on_with_the_next_batch(tmp_path, tiny_data_args):
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    whole = fit_seen(cache, max_epochs=2, enable_checkpointing=False)  # 24 steps per epoch
    every_10 = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=10, save_top_k=-1)
    first = fit_seen(cache, callbacks=[every_10], max_steps=15)
    rest = fit_seen(cache, tmp_path / "step=10.ckpt", max_epochs=2, enable_checkpointing=False)
    assert len(whole) == 48 and first == whole[:15]
    assert rest == whole[10:]  # not the epoch's first 10 batches again
    with pytest.raises(ValueError, match="data.batch_size"):  # batches cut otherwise
        fit_seen(cache, tmp_path / "step=10.ckpt", batch_size=256, enable_checkpointing=False)
