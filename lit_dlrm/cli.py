"""The two command lines, ``lit-dlrm-train`` and ``lit-dlrm-sweep`` (``scripts/*.py`` call them).

``train``: fit DLRM on Criteo (synthetic by default), keep the checkpoint with the best validation
AUC, test it, print its metrics next to the synthetic teacher's. ``--ckpt_path`` resumes a run.

``sweep``: take that checkpoint (``--ckpt_path``, default the newest training run's best) and run
the sparsity grid on the test split, one ``trainer.test`` per point, through the sweep callbacks;
tables, plots and TensorBoard runs go to ``--out_dir``. A killed sweep run again computes only the
missing points. ``--ckpt_path`` also takes a facebookresearch/dlrm ``--save-model`` file or a bare
state_dict; the ``--data.*`` options must then describe the data it was trained on.

Both read their defaults from ``configs/``; ``--print_config`` shows every option.
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks import CheckpointCompression, SparseCooTiming, Sparsify
from lit_dlrm.checkpoint import (
    AtomicCheckpointIO,
    BestCheckpoint,
    check_resumable,
    latest_checkpoint,
)
from lit_dlrm.data import CriteoDataModule
from lit_dlrm.hparams import HParamsSummary
from lit_dlrm.module import DLRMModule
from lit_dlrm.paths import check_directory
from lit_dlrm.sweep.driver import run_sweep
from lit_dlrm.sweep.grid import COLUMNS, make_grid
from lit_dlrm.sweep.report import write_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class CLI(LightningCLI):
    """LightningCLI with a readable error for a binary ``--config``."""

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except UnicodeDecodeError as err:  # jsonargparse reads --config files as text, unguarded
            parser.error(f"--config: not a UTF-8 text (YAML) file: {err}")


class TrainCLI(CLI):
    """``lit-dlrm-train``'s options: LightningCLI's, ``--checkpoint.*`` and ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Not an option: the tables' sizes are the prepared data's (DLRMModule.configure_model).
        parser.link_arguments("data.cache_dir", "model.table_sizes", compute_fn=lambda _: None)
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
        # Path options checked before the data and the model are built, each error naming its
        # option.
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
    """The test metrics (``test/<name>``) as a table, beside the synthetic teacher's if given."""
    lines = [f"{'metric':<12}{'test':>10}{'teacher (Bayes)':>18}"]
    for name in ("auc", "log_loss", "ne", "accuracy", "calibration"):
        ceiling = f"{teacher[name]:>18.4f}" if teacher and name in teacher else f"{'':>18}"
        lines.append(f"{name:<12}{metrics[f'test/{name}']:>10.4f}{ceiling}")
    return "\n".join(lines)


def train(args: list[str] | None = None) -> None:
    """``lit-dlrm-train`` / ``python scripts/train.py``: fit, then test the best checkpoint."""
    cli = TrainCLI(
        DLRMModule,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [str(CONFIGS / "train.yaml")]},
        save_config_kwargs={"overwrite": True},
        # last.ckpt at every validation, whatever the score did, for resuming; every .ckpt written
        # atomically beside its final name, so a killed run never leaves a truncated one.
        trainer_defaults={
            "callbacks": [
                ModelCheckpoint(filename="last", monitor=None, enable_version_counter=False),
                HParamsSummary(),  # the HParams session: hyperparameters, best val and test
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


def trained_model(ckpt_path: str = "latest") -> DLRMModule:
    """The model to sweep: ``latest`` is the best checkpoint of the newest run under runs/train."""
    return DLRMModule.from_weights(latest_checkpoint() if ckpt_path == "latest" else ckpt_path)


class SweepCLI(CLI):
    """The sweep's options: the grid (``--sweep.*``) and the callbacks' own, none the driver sets
    (the point's and ``out_dir``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str,
            default="latest",
            help="checkpoint to sweep ('latest': newest train run)",
        )
        parser.add_argument(
            "--out_dir",
            type=str,
            default="sweeps/default",
            help="where tables, plots and TensorBoard runs go",
        )
        parser.link_arguments("ckpt_path", "model.ckpt_path")
        parser.add_function_arguments(make_grid, "sweep", skip={"embedding_dim", "min_rows"})
        for name, callback in (
            ("sparsify", Sparsify),
            ("compression", CheckpointCompression),
            ("timing", SparseCooTiming),
        ):
            parser.callback_keys.append(name)  # LightningCLI adds it to the trainer's callbacks
            skip = {"out_dir", *COLUMNS}
            parser.add_class_arguments(
                callback, name, fail_untyped=False, sub_configs=True, skip=skip
            )


def sweep(args: list[str] | None = None) -> None:
    """``lit-dlrm-sweep`` / ``python scripts/sweep.py``: the sparsity grid on a checkpoint."""
    cli = SweepCLI(
        trained_model,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [str(CONFIGS / "sweep.yaml")]},
        save_config_callback=None,
    )
    model, data, config = cli.model, cli.datamodule, cli.config
    data.prepare_data()  # the tables' sizes are known once the data is prepared and set up
    data.setup("test")
    sizes = [table.num_embeddings for table in model.model.emb_l]
    if list(data.table_sizes) != sizes:
        raise SystemExit(
            f"--data: the data's table sizes {list(data.table_sizes)} differ from the "
            f"checkpoint's {sizes}; "
            "pass the --data.* options the model was trained with"
        )
    grid = make_grid(
        **config.sweep.as_dict(), embedding_dim=model.hparams.embedding_dim, min_rows=min(sizes)
    )
    run_sweep(cli.trainer, model, data, grid, config.out_dir)
    if cli.trainer.is_global_zero:
        table = write_report(config.out_dir)
        out = config.out_dir
        print(f"{len(table)} grid points in {out}: results.csv, plots, tensorboard/, hparams/")
