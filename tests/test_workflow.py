"""Lightning's own workflow end to end: configs that replay, a sweep that finds its training run's
data in the checkpoint, learning-rate schedules on the sparse tables, quiet runs, one-line errors.

`default_run` trains with the default configuration on the tiny data (a non-default `--data.*`
set), then sweeps with no `--data.*` option, from a fresh working directory as a user would;
every warning and every log record of both is kept and checked against what is expected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from lit_dlrm.cli import ProgressBar, sweep, train
from lit_dlrm.data import CriteoDataModule
from lit_dlrm.module import DLRMModule
from lit_dlrm.schedules import WarmupPolyDecay

SMALL_GRID = [
    "--sweep.sparsity_level=[0.0, 0.9]",
    "--sweep.norm=[L1]",
    "--sweep.studies=[{finetune_steps: [2], weight_bits: [8], sparsity_level: [0.9]}]",
    "--timing.warmup=0",
    "--timing.repeats=1",
]
# Lightning's informational lines (logged at INFO to stderr): what a run is expected to say.
EXPECTED_INFO = (
    "Seed set to ",
    "GPU available: ",
    "TPU available: ",
    "\n  | Name ",  # the model summary
    "`Trainer.fit` stopped: ",
    "Restoring states from the checkpoint path at ",
    "Loaded model weights from the checkpoint at ",
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def everything_said():
    """The warnings a user would see and every log record emitted inside; stderr."""
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("", "lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    stderr = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
            # What a user sees (Python's defaults: DeprecationWarnings only from the code run),
            # every time: Python's for the libraries, and any deprecation lit_dlrm itself meets.
            # The project's own filters, set when a run starts, go in front of these.
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            warnings.filterwarnings("always", category=DeprecationWarning, module="lit_dlrm")
            warnings.filterwarnings("always", category=DeprecationWarning, module="callbacks")
            yield caught, handler.records, stderr
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def unexpected(caught, records) -> list[str]:
    said = [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    for r in records:
        message = r.getMessage()
        if r.levelno >= logging.WARNING or not message.startswith(EXPECTED_INFO):
            said.append(f"log {r.levelname} {r.name}: {message}")
    return said


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_data_args):
    """Train with configs/train.yaml on the tiny data, then sweep with no --data.* option."""
    root = tmp_path_factory.mktemp("workflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(sys, "argv", ["lit-dlrm"])  # as from a shell: no argv beside args
        with everything_said() as (train_warnings, train_logs, _):
            train(tiny_data_args)
        with everything_said() as (sweep_warnings, sweep_logs, sweep_err):
            sweep(SMALL_GRID)
    return {
        "root": root,
        "train": unexpected(train_warnings, train_logs),
        "sweep": unexpected(sweep_warnings, sweep_logs),
        "sweep_bar": sweep_err.getvalue(),
    }


def test_default_train_and_sweep_say_nothing_unexpected(default_run):
    for run in ("train", "sweep"):
        assert default_run[run] == [], f"{run}:\n" + "\n".join(default_run[run])


def test_sweep_bar_shows_the_point_and_its_auc(default_run):
    assert re.search(r"L1_1x4_0\.9 auc=0\.\d{4}", default_run["sweep_bar"])


def test_sweep_takes_the_data_from_the_checkpoint(default_run, tiny_data_args, capsys):
    root = default_run["root"]
    saved = yaml.safe_load((root / "sweeps/default/config.yaml").read_text())
    trained = yaml.safe_load((root / "runs/train/version_0/config.yaml").read_text())
    assert saved["data"] == trained["data"]
    assert saved["data"]["synthetic_rows"] == 14000  # not the default
    # an option given on the command line still wins over the checkpoint's
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        mp.chdir(root)
        sweep(["--data.eval_batch_size=333", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"] == {**trained["data"], "eval_batch_size": 333}


def test_configs_replay(default_run, capsys):
    """The saved config.yaml of both scripts runs again with --config; --print_config output is
    accepted by --config and prints itself again."""
    root = default_run["root"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for run, saved in (
            (train, "runs/train/version_0/config.yaml"),
            (sweep, "sweeps/default/config.yaml"),
        ):
            with pytest.raises(SystemExit):
                run(["--config", saved, "--print_config"])
            printed = capsys.readouterr().out
            (root / "printed.yaml").write_text(printed)
            with pytest.raises(SystemExit):
                run(["--config", "printed.yaml", "--print_config"])
            assert capsys.readouterr().out == printed
        # the sweep's saved config runs (every point is done: nothing is tested again)
        before = (root / "sweeps/default/results.csv").read_text()
        sweep(["--config", "sweeps/default/config.yaml"])
        assert (root / "sweeps/default/results.csv").read_text() == before
        # the training run's saved config trains the same model again
        train(
            ["--config", "runs/train/version_0/config.yaml", "--trainer.enable_progress_bar=false"]
        )
    first, again = (
        torch.load(next((root / f"runs/train/{v}/checkpoints").glob("best-*")), weights_only=True)
        for v in ("version_0", "version_1")
    )
    torch.testing.assert_close(again["state_dict"], first["state_dict"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# learning-rate schedules


def dlrm_policy(n_warmup: int, decay_start: int, n_decay: int, base: float, steps: int):
    """facebookresearch/dlrm's LRPolicyScheduler as it runs: state kept between steps, step
    count from 1; the learning rate of each of ``steps`` optimiser steps."""
    out, last = [], None
    for k in range(1, steps + 1):
        if k < n_warmup:
            last = base * (1.0 - (n_warmup - k) / n_warmup)
            lr = last
        elif decay_start <= k < decay_start + n_decay:
            last = max(1e-7, base * ((n_decay - (k - decay_start)) / n_decay) ** 2)
            lr = last
        elif n_decay > 0:
            lr = last  # dlrm holds the last value (it has none without a warm-up step first)
        else:
            lr = base
        out.append(lr)
    return out


@pytest.mark.parametrize(
    "n_warmup, decay_start, n_decay",
    [(0, 0, 0), (4, 4, 0), (4, 7, 5), (5, 5, 3), (0, 0, 6), (3, 10, 4), (4, 6, 1)],
)
def test_warmup_poly_decay_is_dlrms_policy(n_warmup, decay_start, n_decay):
    param = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.3)
    schedule = WarmupPolyDecay(optimizer, n_warmup, decay_start, n_decay)
    got = []
    for _ in range(20):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert got == pytest.approx(dlrm_policy(n_warmup, decay_start, n_decay, 0.3, 20), rel=1e-12)


def test_warmup_poly_decay_refuses_what_dlrm_refuses():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="decay_start_step"):
        WarmupPolyDecay(optimizer, warmup_steps=5, decay_start_step=3)
    with pytest.raises(ValueError, match="decay_steps"):
        WarmupPolyDecay(optimizer, decay_steps=-1)
    with pytest.raises(ValueError, match="model.lr_scheduler"):
        DLRMModule([5, 5], lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_training_follows_the_schedule(tmp_path, tiny_data_args, capsys):
    """A run with dlrm's schedule on sparse Adagrad: the learning rate in its last checkpoint is
    the policy's at that step, the schedule stepped once per optimiser step."""
    train(
        [
            *tiny_data_args,
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_train_batches=10",
            "--trainer.log_every_n_steps=2",
            "--model.lr=0.02",
            "--model.lr_scheduler=WarmupPolyDecay",
            "--model.lr_scheduler.warmup_steps=4",
            "--model.lr_scheduler.decay_start_step=6",
            "--model.lr_scheduler.decay_steps=8",
        ]
    )
    last = torch.load(tmp_path / "train/version_0/checkpoints/last.ckpt", weights_only=True)
    steps = last["global_step"]
    assert steps == 10 and last["lr_schedulers"][0]["last_epoch"] == steps
    lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(dlrm_policy(4, 6, 8, 0.02, steps + 1)[-1], rel=1e-12)
    assert last["optimizer_states"][0]["state"]  # Adagrad trained: it holds sums per parameter
    # the schedule is in the run's config.yaml by class path, and the file replays
    saved = tmp_path / "train/version_0/config.yaml"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(["--config", str(saved), "--print_config"])
    replayed = yaml.safe_load(capsys.readouterr().out)
    assert replayed["model"]["lr_scheduler"] == {
        "class_path": "lit_dlrm.schedules.WarmupPolyDecay",
        "init_args": {"warmup_steps": 4, "decay_start_step": 6, "decay_steps": 8, "last_epoch": -1},
    }


def test_one_optimiser_mechanism_refuses_dense_only_optimisers(tiny_data_args, capsys):
    for bad in ("--optimizer=Adam", "--model.optimizer=adam", "--lr_scheduler=StepLR"):
        with pytest.raises(SystemExit) as exit_:
            train([*tiny_data_args, bad])
        assert exit_.value.code == 2
        assert bad.split("=")[0].lstrip("-") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the progress bar, errors, no logger


def test_progress_bar_shows_loss_auc_and_log_loss(tmp_path, tiny_data_args):
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=TensorBoardLogger(tmp_path),
        callbacks=[ProgressBar()],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    module = DLRMModule()
    trainer.fit(module, datamodule=data)
    shown = trainer.progress_bar_callback.get_metrics(trainer, module)
    assert set(shown) == {"train/loss", "val/auc", "val/log_loss"}


@pytest.mark.parametrize(
    "script, args, option",
    [
        ("train", ["--ckpt_path={missing}"], "--ckpt_path"),
        ("train", ["--ckpt_path={corrupt}"], "--ckpt_path"),
        ("sweep", ["--ckpt_path={missing}"], "--ckpt_path"),
        ("sweep", ["--ckpt_path={corrupt}"], "--ckpt_path"),
        ("train", ["--data.source=kaggle", "--data.path={missing}"], "--data.path"),
        ("sweep", ["--data.source=kaggle", "--data.path={missing}"], "--data.path"),
        ("train", ["--data.batch_size=0"], "data.batch_size"),
    ],
)
def test_bad_paths_are_one_line_parser_errors(
    script, args, option, tmp_path, tiny_data_args, checkpoint, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    files = {"missing": tmp_path / "missing.file", "corrupt": tmp_path / "corrupt.ckpt"}
    files["corrupt"].write_bytes(bytes(range(256)) * 16)
    args = [a.format(**files) for a in args]
    run = {"train": train, "sweep": sweep}[script]
    ckpt = [] if script == "train" or "--ckpt_path" in args[0] else [f"--ckpt_path={checkpoint}"]
    with pytest.raises(SystemExit) as exit_:
        run([*tiny_data_args, *ckpt, *args])
    assert exit_.value.code == 2  # a parser error, not an exception
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {option}"), errors


def test_training_without_a_logger_finishes(tmp_path, tiny_data_args, capsys):
    train(
        [
            *tiny_data_args,
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_train_batches=4",
        ]
    )
    out = capsys.readouterr().out
    assert "best checkpoint:" in out and "TensorBoard" not in out
    assert list(Path(tmp_path, "checkpoints").glob("best-*.ckpt"))
