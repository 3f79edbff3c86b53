"""Train DLRM: ``python scripts/train.py [--config configs/train.yaml] [--model.* --data.* --trainer.*]``.

With no arguments it trains on the synthetic Criteo default, keeps the checkpoint with the best
validation AUC, tests that checkpoint on the test split (never used for selection), and prints its
metrics next to the synthetic teacher's Bayes-optimal ones. ``--ckpt_path`` resumes a run (for
example from its ``last.ckpt``); ``--print_config`` shows every option.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not

from lit_dlrm.best_checkpoint import BestCheckpoint  # noqa: E402
from lit_dlrm.checkpoint import check_resumable  # noqa: E402
from lit_dlrm.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from lit_dlrm.cli import CLI  # noqa: E402
from lit_dlrm.data import CriteoDataModule  # noqa: E402
from lit_dlrm.module import DLRMModule  # noqa: E402
from lit_dlrm.paths import check_directory  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"


class TrainCLI(CLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.table_sizes", "model.table_sizes", apply_on="instantiate")
        # The best-checkpoint callback is part of the job, not an optional extra: always present,
        # every option overridable as --checkpoint.*; consistent with last.ckpt through a kill
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auc",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:02d}-auc{val/auc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="resume from this checkpoint"
        )

    def before_instantiate_classes(self) -> None:
        # Path options checked before the data and the model are built, each error naming its option.
        if self.config.ckpt_path:
            check_resumable(self.config.ckpt_path, self.config.model.as_dict())
        check_directory("--checkpoint.dirpath", self.config.checkpoint.dirpath)
        # Resuming from runs/train/version_N/checkpoints/*.ckpt logs into version_N again, so the
        # checkpoint callback finds its own directory and keeps the best score of the whole run.
        logger, ckpt = self.config.trainer.logger, self.config.ckpt_path
        found = re.search(r"version_(\d+)[/\\]checkpoints[/\\][^/\\]+$", ckpt or "")
        if (
            found
            and getattr(logger, "class_path", "").endswith("TensorBoardLogger")
            and logger.init_args.version is None
        ):
            logger.init_args.version = int(found.group(1))


def report(metrics: dict[str, float], teacher: dict[str, float] | None) -> str:
    lines = [f"{'metric':<12}{'test':>10}{'teacher (Bayes)':>18}"]
    for name in ("auc", "log_loss", "ne", "accuracy", "calibration"):
        ceiling = f"{teacher[name]:>18.4f}" if teacher and name in teacher else f"{'':>18}"
        lines.append(f"{name:<12}{metrics[f'test/{name}']:>10.4f}{ceiling}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    cli = TrainCLI(
        DLRMModule,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        save_config_kwargs={"overwrite": True},
        # last.ckpt at every validation, whatever the score did, for resuming; every .ckpt written
        # atomically beside its final name, so a killed run never leaves a truncated one.
        trainer_defaults={
            "callbacks": [
                ModelCheckpoint(filename="last", monitor=None, enable_version_counter=False)
            ],
            "plugins": [AtomicCheckpointIO()],
        },
    )
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path)
    best = trainer.checkpoint_callback.best_model_path
    (metrics,) = trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
    if trainer.is_global_zero:
        print(report(metrics, data.teacher_metrics("test")))
        print(f"best checkpoint: {best}")
        print(f"TensorBoard:     tensorboard --logdir {trainer.logger.save_dir}")


if __name__ == "__main__":
    main()
