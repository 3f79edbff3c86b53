"""TensorBoard HParams: the training run's session (`HParamsSummary`) and the sweep's sessions
(`write_sessions`), both written with torch's ``hparams`` summaries, the ones Lightning's
``TensorBoardLogger.log_hyperparams`` writes.

A session is a run directory holding a session-start summary (its hyperparameters) and scalars
(its metrics: TensorBoard reads each metric's last value); one experiment summary per log
directory declares the hyperparameters and metrics that the HParams table, parallel-coordinates
and scatter views show. TensorBoard keeps a run's first experiment summary, so nothing writes a
placeholder one earlier (``default_hp_metric: false`` in ``configs/train.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

PREFIX = "hp/"  # the HParams metrics' scalar tags: hp/val_<metric>, hp/test_<metric>


def run_hparams(model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model": ..., "data": ...}``: every hyperparameter of the model and of the data module,
    less Lightning's private entries (``_instantiator``, ``_class_path``) and with the model's
    ``table_sizes`` (one entry per table) as ``num_tables`` and ``table_rows`` (their sum)."""
    model = {k: v for k, v in model.items() if not k.startswith("_")}
    sizes = model.pop("table_sizes", None)
    if sizes is not None:
        model["num_tables"], model["table_rows"] = len(sizes), int(sum(sizes))
    return {"model": model, "data": {k: v for k, v in data.items() if not k.startswith("_")}}


class HParamsSummary(L.Callback):
    """After the test that follows training, log one HParams session to every TensorBoardLogger:
    the model's and the data's hyperparameters (`run_hparams`; shown as ``model/<name>`` and
    ``data/<name>``) with ``hp/val_<metric>``, every ``val/<metric>`` of the validation whose
    checkpoint ``trainer.checkpoint_callback`` keeps (the one ``lit-dlrm-train`` tests; the last
    validation when that callback monitors nothing), and ``hp/test_<metric>``, every
    ``test/<metric>`` of that test. Logged once, at the last training step.

    The validation metrics of every validation are kept in the callback's state, so a resumed fit
    still knows those of a best checkpoint written before it resumed.
    """

    def __init__(self) -> None:
        self.validations: list[dict[str, float]] = []  # val/* of each validation, in order

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        )

    def best_validation(self, trainer: L.Trainer) -> dict[str, float]:
        """The val/* metrics of the kept checkpoint's validation ({} if there was none)."""
        if not self.validations:
            return {}
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        best = getattr(checkpoint, "best_model_score", None)
        if monitor is None or best is None:
            return self.validations[-1]
        # ModelCheckpoint replaces its best only on a strict improvement: the first equal is it.
        for values in self.validations:
            if values.get(monitor) == float(best):
                return values
        rank_zero_warn(
            f"HParamsSummary: no validation recorded in this run has {monitor}={float(best)}, the "
            "best checkpoint's score (a fit resumed from a checkpoint written without this "
            f"callback); hp/val_* holds {monitor} alone"
        )
        return {monitor: float(best)}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        metrics = {
            **{f"{PREFIX}val_{k[4:]}": v for k, v in self.best_validation(trainer).items()},
            **{
                f"{PREFIX}test_{k[5:]}": float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("test/")
            },
        }
        params = run_hparams(pl_module.hparams, getattr(trainer.datamodule, "hparams", {}))
        for logger in loggers:
            logger.log_hyperparams(params, metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = list(state_dict["validations"])


def write_sessions(
    log_dir: Path,
    sessions: Mapping[str, tuple[dict[str, Any], dict[str, float]]],
    domains: Mapping[str, list] | None = None,
) -> None:
    """Write one HParams session per entry ``run -> (hyperparameters, metrics)`` as the run
    directory ``log_dir/run`` (metrics as scalars at step 0; NaN ones left out), and one
    experiment summary in ``log_dir`` declaring every hyperparameter and every metric of any
    session. ``domains``: the values a string hyperparameter takes, listed in the HParams filter.
    Hyperparameter values: int, float, str or bool."""
    domains = dict(domains or {})
    names = sorted({name for _, metrics in sessions.values() for name in metrics})
    for run, (params, metrics) in sessions.items():
        _, start, end = hparams(params, {}, {k: v for k, v in domains.items() if k in params})
        with SummaryWriter(str(log_dir / run)) as writer:
            writer.file_writer.add_summary(start)
            for name, value in metrics.items():
                if not math.isnan(value):
                    writer.add_scalar(name, value, global_step=0)
            writer.file_writer.add_summary(end)
    if sessions:
        params = next(iter(sessions.values()))[0]
        experiment, _, _ = hparams(
            params, dict.fromkeys(names, 0.0), {k: v for k, v in domains.items() if k in params}
        )
        with SummaryWriter(str(log_dir)) as writer:
            writer.file_writer.add_summary(experiment)
