"""The command lines, ``lit-dlrm-{train,sweep,predict,export}`` (``scripts/*.py`` call them).

``train``: fit DLRM on Criteo (synthetic by default), keep the checkpoint with the best validation
AUC, test it, print its metrics next to the synthetic teacher's. ``--ckpt_path`` resumes a run.

``sweep``: take that checkpoint (``--ckpt_path``, default the newest training run's best) and run
the sparsity grid on the test split, one ``trainer.test`` per point, through the sweep callbacks;
tables, plots, TensorBoard runs and the sweep's ``config.yaml`` (written when a point is first
tested) go to ``--out_dir``. A killed sweep run again computes only the missing points. The data
is the checkpoint's own: the ``--data.*`` options default to the DataModule arguments a Lightning
checkpoint was trained with (options given still win). ``--ckpt_path`` also takes a
facebookresearch/dlrm ``--save-model`` file or a bare state_dict, which carry none: the
``--data.*`` options must then describe the data.

Both read their defaults from ``configs/``; ``--print_config`` shows every option, and its output,
like a training run's ``config.yaml``, is accepted by ``--config``. A bad path or input file is a
parser error naming the option; a bad grid is a ValueError naming its ``--sweep.*`` option.

``predict``: score a Criteo-format file of rows into a CSV of probabilities. ``export``: a
checkpoint's weights as safetensors plus a JSON config, tables dense, compact, int8 or int4.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks import CheckpointCompression, SparseCooTiming, Sparsify
from lit_dlrm.checkpoint import (
    BestCheckpoint,
    CheckpointError,
    check_resumable,
    datamodule_options,
    latest_checkpoint,
)
from lit_dlrm.data import CriteoDataModule, CriteoFormatError
from lit_dlrm.export import save_weights, stored_model
from lit_dlrm.hparams import HParamsSummary
from lit_dlrm.module import Backend, DLRMModule
from lit_dlrm.paths import NoSpaceError, atomic_write, check_directory
from lit_dlrm.predict import score_file
from lit_dlrm.schedules import WarmupPolyDecay
from lit_dlrm.sharded import checkpoint as sharded_checkpoint
from lit_dlrm.sparsity.compact import compact_model
from lit_dlrm.sparsity.quantize import quantized_model
from lit_dlrm.sweep.driver import run_sweep
from lit_dlrm.sweep.grid import COLUMNS, make_grid
from lit_dlrm.sweep.report import write_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def default_config(name: str) -> str:
    """``configs/<name>``, the command's defaults (the atomic checkpoint writer, the logger layout,
    the grid). They live beside the package, so an install that is not an editable one of a
    checkout lacks them: refused by name rather than run silently without them."""
    path = CONFIGS / name
    if not path.is_file():
        raise SystemExit(
            f"{path}: the default configuration is missing; install lit_dlrm from its checkout "
            "(pip install -e .) so that configs/ is beside the package"
        )
    return str(path)


# Imported so that jsonargparse knows it by its short name: --model.lr_scheduler=WarmupPolyDecay
SCHEDULES = (WarmupPolyDecay,)


class LightningTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: For seamless cloud logging ...", "... cloud
    uploads ...": install litlogger / litmodels), logged at every Trainer; they say nothing about
    the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIPS = LightningTips()


def quiet_known_noise() -> None:
    """Silence the messages this project cannot avoid, each by its text (idempotent)."""
    # Lightning's own batch-transfer helper (lightning/pytorch/utilities/_pytree.py) builds torch's
    # deprecated LeafSpec; once per trainer.test, so once per sweep point. Nothing here calls it.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_TIPS)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger's version number (``v_num``); the module puts only
    train loss, val AUC and val log loss on it."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def prepare(cli: LightningCLI, data: CriteoDataModule) -> None:
    """Build the data's cache now (a Trainer's own call finds it built), so that a missing or
    unreadable ``--data.path`` is a parser error rather than a traceback from inside the fit."""
    try:
        data.prepare_data()
    except (CriteoFormatError, FileNotFoundError, IsADirectoryError) as err:
        cli.parser.error(f"--data.path: {err}" if "--data.path" not in str(err) else str(err))


class CLI(LightningCLI):
    """LightningCLI whose configuration errors are parser errors: a binary ``--config``, and the
    ValueErrors (CheckpointError included) and Lightning misconfigurations raised while the
    classes are built, each of which names its option."""

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            self.parse(parser, args)
        except UnicodeDecodeError as err:  # jsonargparse reads --config files as text, unguarded
            parser.error(f"--config: not a UTF-8 text (YAML) file: {err}")

    def parse(self, parser: LightningArgumentParser, args) -> None:
        """LightningCLI's parse (``args`` None: the command line)."""
        super().parse_arguments(parser, args)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as err:
            self.parser.error(str(err))


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
        try:
            if self.config.ckpt_path and sharded_checkpoint.is_sharded(self.config.ckpt_path):
                sharded_checkpoint.check_resumable(
                    self.config.ckpt_path, self.config.model.as_dict()
                )
            elif self.config.ckpt_path:
                check_resumable(self.config.ckpt_path, self.config.model.as_dict())
            check_directory("--checkpoint.dirpath", self.config.checkpoint.dirpath)
        except ValueError as err:
            self.parser.error(str(err))
        trainer = self.config.trainer
        users_bar = any(
            "ProgressBar" in str(getattr(cb, "class_path", "")) for cb in trainer.callbacks or ()
        )
        if trainer.enable_progress_bar is not False and not users_bar:
            self.trainer_defaults.setdefault("callbacks", []).append(ProgressBar())
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


def reports_no_space(command: Callable[[list[str] | None], None]) -> Callable:
    """``command`` with a full disk (:class:`~lit_dlrm.paths.NoSpaceError`, which names the file)
    reported in one line, exit status 1, instead of a traceback."""

    @functools.wraps(command)
    def run(args: list[str] | None = None) -> None:
        try:
            command(args)
        except NoSpaceError as err:
            raise SystemExit(f"error: {err.strerror}") from err

    return run


@reports_no_space
def train(args: list[str] | None = None) -> None:
    """``lit-dlrm-train`` / ``python scripts/train.py``: fit, then test the best checkpoint."""
    quiet_known_noise()
    cli = TrainCLI(
        DLRMModule,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [default_config("train.yaml")]},
        save_config_kwargs={"overwrite": True},
        # One optimiser mechanism: --model.optimizer / --model.lr / --model.lr_scheduler, which
        # only offer what works with the tables' sparse gradients; no LightningCLI --optimizer.
        auto_configure_optimizers=False,
        # last.ckpt at every validation, whatever the score did, for resuming. (The atomic
        # checkpoint writer is a plugin in configs/train.yaml, so the saved config replays.)
        trainer_defaults={
            "callbacks": [
                ModelCheckpoint(filename="last", monitor=None, enable_version_counter=False),
                HParamsSummary(),  # the HParams session: hyperparameters, best val and test
            ],
        },
    )
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    prepare(cli, data)
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path)
    best = trainer.checkpoint_callback.best_model_path
    (metrics,) = trainer.test(model, datamodule=data, ckpt_path=best or None, verbose=False)
    if trainer.is_global_zero:
        print(report(metrics, data.teacher_metrics("test")))
        print(f"best checkpoint: {best}")
        if isinstance(trainer.logger, TensorBoardLogger):
            print(f"TensorBoard:     tensorboard --logdir {trainer.logger.save_dir}")


def resolve(ckpt_path: str) -> Path:
    """``--ckpt_path`` as a file: ``latest`` is the best checkpoint of the newest training run
    under runs/train. Raises CheckpointError naming --ckpt_path."""
    try:
        return latest_checkpoint() if ckpt_path == "latest" else Path(ckpt_path)
    except CheckpointError as err:
        raise CheckpointError(f"--ckpt_path: {err}") from err


def trained_model(ckpt_path: str = "latest", backend: Backend = "torch") -> DLRMModule:
    """The model to sweep, read from ``ckpt_path`` (see :func:`resolve`), its tables in
    ``backend`` (``torchrec``: for ``--trainer.strategy`` ``TorchRecStrategy``, which shards
    them). Of a sharded checkpoint directory, the module is built from its hyperparameters and
    the strategy reads the weights (:func:`~lit_dlrm.sweep.driver.run_sweep`)."""
    path = resolve(ckpt_path)
    if sharded_checkpoint.is_sharded(path):
        if backend != "torchrec":
            raise CheckpointError(
                f"--ckpt_path: {path} is a sharded checkpoint directory: sweep it sharded "
                f"(--model.backend=torchrec --trainer.strategy={sharded_checkpoint.STRATEGY}) "
                f"or make it one file: python -m lit_dlrm.sharded.checkpoint {path} ONE_FILE.ckpt"
            )
        return DLRMModule(**sharded_checkpoint.hyper_parameters(path))
    try:
        return DLRMModule.from_weights(path, backend)
    except CheckpointError as err:
        raise CheckpointError(f"--ckpt_path: {err}") from err


class SweepCLI(CLI):
    """The sweep's options: the grid (``--sweep.*``) and the callbacks' own, none the driver sets
    (the point's and ``out_dir``); the ``--data.*`` defaults are the checkpoint's."""

    def parse(self, parser: LightningArgumentParser, args) -> None:
        # A first parse finds the checkpoint (--ckpt_path, from any source); its DataModule
        # arguments become the --data.* defaults of the real parse, so that options given on the
        # command line or in a --config still override them. --print_config waits for the second.
        given = sys.argv[1:] if args is None else args
        first = parser.parse_args([a for a in given if not str(a).startswith("--print_config")])
        try:
            options = datamodule_options(resolve(first.ckpt_path))
        except CheckpointError:
            options = None  # reported, naming --ckpt_path, when the model is built
        if options:
            known = parser.get_defaults()
            defaults = {f"data.{k}": v for k, v in options.items()}
            parser.set_defaults({k: v for k, v in defaults.items() if k in known})
        super().parse(parser, args)

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


# jsonargparse 4.49 renamed dump's skip_none to skip_unset (the old name now warns)
_KEEP_NULLS = {
    "skip_unset"
    if "skip_unset" in inspect.signature(ArgumentParser.dump).parameters
    else "skip_none": False
}


class SaveSweepConfig(SaveConfigCallback):
    """Writes the sweep's options to ``--out_dir``/config.yaml when a point is first tested,
    atomically (a killed sweep leaves the old file or the new one, whole), nulls included so
    that ``--config`` replays them."""

    def __init__(self, parser: LightningArgumentParser, config, **kwargs) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        # the file swept, not 'latest': a replay after another training run sweeps the same model
        config = self.config.clone()
        config.ckpt_path = str(resolve(config.ckpt_path))
        text = self.parser.dump(config, **_KEEP_NULLS)
        atomic_write(Path(self.config.out_dir) / "config.yaml", lambda tmp: tmp.write_text(text))


@reports_no_space
def sweep(args: list[str] | None = None) -> None:
    """``lit-dlrm-sweep`` / ``python scripts/sweep.py``: the sparsity grid on a checkpoint."""
    quiet_known_noise()
    cli = SweepCLI(
        trained_model,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [default_config("sweep.yaml")]},
        save_config_callback=SaveSweepConfig,
        auto_configure_optimizers=False,  # fine-tuning uses the model's own optimiser
    )
    model, data, config = cli.model, cli.datamodule, cli.config
    prepare(cli, data)  # the tables' sizes are known once the data is prepared and set up
    data.setup("test")
    sizes = list(model.hparams.table_sizes)
    if list(data.table_sizes) != sizes:
        cli.parser.error(
            f"--data: the data's table sizes {list(data.table_sizes)} differ from the "
            f"checkpoint's {sizes}; pass the --data.* options the model was trained with"
        )
    grid = make_grid(
        **config.sweep.as_dict(), embedding_dim=model.hparams.embedding_dim, min_rows=min(sizes)
    )
    weights = resolve(config.ckpt_path)
    sharded = sharded_checkpoint.is_sharded(weights)
    if sharded and not getattr(cli.trainer.strategy, "shards_tables", False):
        got = type(cli.trainer.strategy).__name__
        cli.parser.error(
            f"--ckpt_path: {weights} is a sharded checkpoint directory; it is swept with "
            f"--trainer.strategy={sharded_checkpoint.STRATEGY}, got {got}"
        )
    run_sweep(cli.trainer, model, data, grid, config.out_dir, weights if sharded else None)
    if cli.trainer.is_global_zero:
        table = write_report(config.out_dir)
        out = config.out_dir
        print(f"{len(table)} grid points in {out}: results.csv, plots, tensorboard/, hparams/")


def _checkpoint(parser: LightningArgumentParser, ckpt_path: str) -> tuple[str, DLRMModule]:
    """(path, module) of ``--ckpt_path`` ('latest': the newest training run's best); a bad file
    is a parser error of one line."""
    try:
        path = resolve(ckpt_path)
        return str(path), trained_model(str(path))
    except CheckpointError as err:
        parser.error(str(err))


@reports_no_space
def predict(args: list[str] | None = None) -> None:
    """``lit-dlrm-predict`` / ``python scripts/predict.py``: the click probability of every row of
    a Criteo-format file (``--rows``) into a CSV (``--out``), by ``trainer.predict``
    (:mod:`lit_dlrm.predict`). The training data, whose vocabulary maps the rows' values to ids,
    is described by the checkpoint's own data options; ``--data.*`` options override them."""
    parser = LightningArgumentParser(prog="lit-dlrm-predict", description=predict.__doc__)
    parser.add_argument("--rows", type=str, required=True, help="Criteo-format file to score")
    parser.add_argument("--ckpt_path", type=str, default="latest", help="model ('latest': newest)")
    parser.add_argument("--out", type=str, default="predictions.csv", help="CSV to write")
    parser.add_argument("--batch_size", type=int, default=16384, help="rows per predict batch")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning's accelerator")
    parser.add_class_arguments(CriteoDataModule, "data")
    given = parser.parse_args(args, defaults=False)  # the options given, to override the stored
    config = parser.parse_args(args)
    ckpt, module = _checkpoint(parser, config.ckpt_path)
    options = {**config.data.as_dict(), **(datamodule_options(ckpt) or {})}
    if given.get("data"):
        options.update(given.data.as_dict())
    trainer = L.Trainer(
        accelerator=config.accelerator, devices=1, logger=False, enable_progress_bar=False
    )
    try:
        out, rows, unseen = score_file(
            module, CriteoDataModule(**options), config.rows, config.out, config.batch_size, trainer
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"{rows} rows scored into {out}; {unseen} categorical values were unseen in training")


@reports_no_space
def export(args: list[str] | None = None) -> None:
    """``lit-dlrm-export`` / ``python scripts/export.py``: any checkpoint the sweep reads (lit_dlrm
    ``.ckpt``, dlrm ``--save-model``, state_dict, ``.lds``) as safetensors plus a JSON config
    (:mod:`lit_dlrm.export`), its tables dense, compact (pruned blocks left out) or int8 / int4."""
    parser = LightningArgumentParser(prog="lit-dlrm-export", description=export.__doc__)
    parser.add_argument("--ckpt_path", type=str, default="latest", help="model ('latest': newest)")
    parser.add_argument("--out_dir", type=str, required=True, help="directory to write")
    parser.add_argument(
        "--tables",
        type=Literal["as_stored", "dense", "compact", "int8", "int4"],
        default="as_stored",
        help="form of the embedding tables ('as_stored': dense, or a quantised .lds's integers)",
    )
    parser.add_argument(
        "--block_width", type=int, default=1, help="--tables=compact: the pruning block's width"
    )
    config = parser.parse_args(args)
    if config.block_width != 1 and config.tables != "compact":
        parser.error(f"--block_width={config.block_width}: only --tables=compact uses it")
    path, module = _checkpoint(parser, config.ckpt_path)
    dense = module.model.eval()  # a quantised .lds's tables dequantised, as the sweep scored them
    stored = stored_model(dense, path)
    try:
        if config.tables in ("as_stored", "dense"):
            model = stored if config.tables == "as_stored" else dense
        elif config.tables == "compact":
            model = compact_model(dense, config.block_width)
        else:  # int8 / int4: the stored integers when they are of that width, else quantised here
            bits = int(config.tables[3:])
            kept = all(getattr(t, "bits", None) == bits for t in stored.emb_l)
            model = stored if kept else quantized_model(dense, bits)
    except ValueError as err:
        parser.error(f"--tables={config.tables}: {err}")
    print(f"exported to {save_weights(model, config.out_dir)}")
