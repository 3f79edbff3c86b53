"""TensorBoard's HParams view of a training run and of a sweep, read back from the event files
through TensorBoard's own hparams plugin (the `/experiment` and `/session_groups` requests its
dashboard makes), in process: what the HParams table and parallel-coordinates view show."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams.hparams_plugin import HParamsPlugin
from werkzeug.test import Client

from lit_dlrm.checkpoint import latest_checkpoint
from lit_dlrm.cli import sweep, train
from lit_dlrm.hparams import HParamsSummary
from lit_dlrm.sweep.grid import COLUMNS, GridPoint
from lit_dlrm.sweep.report import write_report

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def hparams_view(logdir) -> tuple[dict, dict[str, dict]]:
    """(experiment, session groups by name) as TensorBoard's HParams dashboard receives them."""
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = MultiplexerDataProvider(mux, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=mux)
    apps = HParamsPlugin(context).get_plugin_apps()

    def post(route: str, request: dict) -> dict:
        response = Client(apps[route]).post("/", data=json.dumps(request))
        assert response.status_code == 200, response.get_data(as_text=True)
        return json.loads(response.get_data())

    experiment = post("/experiment", {"experimentName": ""})
    request = {"allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 10_000}
    groups = post("/session_groups", request)["sessionGroups"]
    return experiment, {group["name"]: group for group in groups}


def metric_values(group: dict) -> dict[str, tuple[int, float]]:
    """The group's metrics: tag -> (step, value)."""
    return {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in group["metricValues"]}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run directory: tag -> [(step, value), ...]."""
    series: dict[str, list] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return series


# -- the training run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, tiny_data_args):
    root = tmp_path_factory.mktemp("hparams-train")
    train(
        [
            *tiny_data_args,
            "--trainer.max_epochs=2",
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.val_check_interval=0.5",
        ]
    )
    return root


def test_training_session_holds_model_and_data_options_with_best_val_and_test(train_run):
    experiment, groups = hparams_view(train_run)
    assert list(groups) == ["train/version_0"]  # one session: the run
    (group,) = groups.values()
    params = group["hparams"]
    declared = {info["name"] for info in experiment["hparamInfos"]}
    assert set(params) == declared
    assert not [name for name in declared if "/_" in name or "table_sizes" in name]
    # the data module's options beside the model's, as the command line set them
    assert params["data/batch_size"] == 512 and params["data/synthetic_rows"] == 14000
    assert params["data/source"] == "synthetic" and params["model/optimizer"] == "adagrad"
    ckpt = torch.load(latest_checkpoint(train_run / "train"), weights_only=True)
    sizes = ckpt["hyper_parameters"]["table_sizes"]
    assert params["model/num_tables"] == len(sizes) == 26
    assert params["model/table_rows"] == sum(sizes)

    run = scalars(train_run / "train" / "version_0")
    assert "hp_metric" not in run  # no placeholder
    metrics = metric_values(group)
    declared = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert set(metrics) == declared
    assert {"hp/val_auc", "hp/val_log_loss", "hp/val_ne", "hp/test_auc", "hp/test_ne"} <= declared
    # best validation: the checkpointed one (highest val/auc, the first of equals), every metric
    # of that same validation; logged once, at the last step (no value at step 0)
    val_steps = [step for step, _ in run["val/auc"]]
    assert len(val_steps) == 4
    best = int(np.argmax([value for _, value in run["val/auc"]]))
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("BestCheckpoint")]
    assert float(state["best_model_score"]) == run["val/auc"][best][1]
    last_step = run["test/auc"][0][0]
    for tag, values in run.items():
        if tag.startswith("val/"):
            assert metrics[f"hp/val_{tag[4:]}"] == (last_step, values[best][1]), tag
        if tag.startswith("test/"):
            assert metrics[f"hp/test_{tag[5:]}"] == values[-1], tag
        if tag.startswith("hp/"):
            assert [step for step, _ in values] == [last_step], tag


def test_best_validation_is_the_checkpoints_not_the_last():
    summary = HParamsSummary()
    summary.validations = [  # values exact in float32, as logged metrics are
        {"val/auc": 0.625, "val/log_loss": 0.5},
        {"val/auc": 0.875, "val/log_loss": 0.375},
        {"val/auc": 0.875, "val/log_loss": 0.25},  # equal: ModelCheckpoint keeps the first
        {"val/auc": 0.75, "val/log_loss": 0.125},
    ]

    def trainer(monitor, score):
        checkpoint = SimpleNamespace(monitor=monitor, best_model_score=score)
        return SimpleNamespace(checkpoint_callback=checkpoint)

    best = summary.best_validation(trainer("val/auc", torch.tensor(0.875)))
    assert best == summary.validations[1]
    assert summary.best_validation(trainer(None, None)) == summary.validations[-1]
    # resumed from a checkpoint written without this callback: the score alone, and a warning
    summary.load_state_dict({"validations": summary.validations[3:]})
    with pytest.warns(UserWarning, match="val/auc=0.875"):
        assert summary.best_validation(trainer("val/auc", torch.tensor(0.875))) == {
            "val/auc": 0.875
        }
    assert HParamsSummary().best_validation(trainer("val/auc", None)) == {}


# -- the sweep -----------------------------------------------------------------------------------

GRID = [
    "--sweep.sparsity_level=[0.0, 0.5]",
    "--sweep.sparse_block_shape=[[1, 4]]",
    "--sweep.studies=[{weight_bits: [8], threshold: [global], norm: [L2], sparsity_level: [0.5]},"
    " {activation_sparsity: [0.8], finetune_steps: [5], norm: [L1], sparsity_level: [0.5]}]",
    "--timing.warmup=0",
    "--timing.repeats=1",
    "--timing.batch_size=256",
]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tiny_data_args, checkpoint):
    out = tmp_path_factory.mktemp("hparams-sweep")
    sweep([*tiny_data_args, *GRID, f"--ckpt_path={checkpoint}", f"--out_dir={out}"])
    return out


def check_sweep_sessions(out) -> None:
    results = pd.read_csv(out / "results.csv", dtype={"sparse_block_shape": str})
    experiment, groups = hparams_view(out / "hparams")
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert sorted(infos) == sorted(COLUMNS)
    assert infos["norm"]["domainDiscrete"] == ["L1", "L2"]
    assert infos["threshold"]["domainDiscrete"] == ["global", "per_table"]
    metrics = {
        "roc_auc",
        "log_loss",
        "ne",
        "zip_bytes",
        "zstd_sparse_bytes",
        "table_bytes_compact",
        "forward_ms_dense",
        "forward_ms_coo",
        "forward_ms_compact",
    }
    assert metrics <= {info["name"]["tag"] for info in experiment["metricInfos"]}
    # one session per grid point, holding the point's columns and its row's figures
    assert len(groups) == len(results) == 4 + 1 + 1
    for row in results.to_dict("records"):
        point = GridPoint.from_row(row)
        group = groups[point.key]
        assert group["hparams"] == {
            name: value if isinstance(value, str) else float(value)
            for name, value in point.row.items()
        }
        values = metric_values(group)
        for tag in metrics:
            column, scale = tag, 1
            if tag.startswith("forward_ms_"):
                column, scale = tag.replace("forward_ms_", "forward_s_"), 1000
            expected = np.float32(row[column] * scale)
            assert np.float32(values[tag][1]) == expected, (point.key, tag)
    for session in (out / "hparams").iterdir():
        assert session.is_file() or len(list(session.iterdir())) == 1, session


def test_sweep_has_one_hparams_session_per_point(sweep_dir):
    results = pd.read_csv(sweep_dir / "results.csv")
    assert {8, 32} == set(results.weight_bits) and {0, 5} == set(results.finetune_steps)
    assert {0.0, 0.8} == set(results.activation_sparsity)
    check_sweep_sessions(sweep_dir)


def test_report_rebuilt_holds_the_same_sessions_once(sweep_dir):
    before = sorted(p.name for p in (sweep_dir / "hparams").iterdir() if p.is_dir())
    write_report(sweep_dir)  # as a resumed sweep does: no duplicated events, no leftovers
    assert sorted(p.name for p in (sweep_dir / "hparams").iterdir() if p.is_dir()) == before
    check_sweep_sessions(sweep_dir)
    assert not [p for p in sweep_dir.iterdir() if p.name.endswith((".tmp", ".old"))]
