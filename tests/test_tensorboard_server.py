"""The sweep's TensorBoard runs, read back through a real `tensorboard` server's HTTP data API.

A tiny sweep writes `<out_dir>/tensorboard`; `python -m tensorboard.main --port 0` serves it (the
OS picks a free port, which the server prints in its "TensorBoard <version> at <url>" line); the
test reads `/data/runs`, `/data/plugin/scalars/tags` and `/data/plugin/scalars/scalars?run=&tag=`
and checks them against the sweep's results.csv: one run per norm x block shape, the metric tags,
and every (step, value) pair, step = sparsity level in percent. TensorBoard stores float32, so
values are compared after rounding results.csv's to float32. The server is killed in `finally`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch

from lit_dlrm.data import CriteoDataModule
from lit_dlrm.module import DLRMModule

STARTUP_S = 60  # generous: the server's imports are slow on a loaded machine
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tiny_data_args):
    """A tiny sweep: 2 norms x 2 block shapes x levels 0 and 0.5 over an untrained model."""
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    data.setup()
    tables = data.table_sizes
    root = tmp_path_factory.mktemp("tb-sweep")
    torch.manual_seed(0)
    torch.save(DLRMModule(tables).model.state_dict(), root / "model.pt")
    from lit_dlrm.cli import sweep

    sweep(
        [
            *tiny_data_args,
            f"--ckpt_path={root / 'model.pt'}",
            f"--out_dir={root / 'out'}",
            "--sweep.sparsity_level=[0.0, 0.5]",
            "--sweep.studies=[]",
            "--timing.warmup=0",
            "--timing.repeats=1",
            "--timing.batch_size=256",
        ]
    )
    return root / "out"


def get_json(url: str):
    with HTTP.open(url, timeout=10) as response:
        return json.loads(response.read())


def start_server(logdir) -> tuple[subprocess.Popen, str]:
    """A tensorboard server on a free port and its base URL; skips the test if it cannot bind."""
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--load_fast=false",
        "--reload_interval=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read():  # the serving line, then drain stderr so the server never blocks on it
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"TensorBoard \S+ at http://", line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + STARTUP_S
    while not found.wait(0.1) and proc.poll() is None and time.monotonic() < deadline:
        pass
    if not found.is_set():
        proc.kill()
        proc.wait()
        output = "".join(lines)
        if re.search(
            r"could not bind|unable to find any open port|must be run as superuser", output
        ):
            pytest.skip(f"tensorboard cannot bind a port here: {output[-300:]}")
        raise AssertionError(f"tensorboard did not start within {STARTUP_S} s:\n{output[-2000:]}")
    url = re.search(r"at (http://\S+?)/? ", next(ln for ln in lines if " at http://" in ln)).group(
        1
    )
    return proc, url


def expected_series(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """results.csv's rows per TensorBoard run: `L1_1x4` for norm L1 with (1, 4) blocks."""
    runs = {}
    for (norm, shape), rows in results.groupby(["norm", "sparse_block_shape"]):
        height, width = (int(x) for x in shape.strip("()").split(","))
        runs[f"{norm}_{height}x{width}"] = rows.sort_values("sparsity_level")
    return runs


def test_tensorboard_serves_the_sweep_results(sweep_dir):
    results = pd.read_csv(sweep_dir / "results.csv")
    assert (
        results[["threshold", "weight_bits", "finetune_steps"]].astype(str).values
        == ["per_table", "32", "0"]
    ).all()
    runs = expected_series(results)
    assert sorted(runs) == ["L1_1x1", "L1_1x4", "L2_1x1", "L2_1x4"]
    proc, url = start_server(sweep_dir / "tensorboard")
    try:
        deadline, tags = time.monotonic() + STARTUP_S, None
        while True:  # the server loads the event files in the background: wait until it settles
            served_runs = get_json(f"{url}/data/runs")
            tags, before = get_json(f"{url}/data/plugin/scalars/tags"), tags
            if (
                sorted(served_runs) == sorted(runs)
                and all(tags.get(r) for r in runs)
                and tags == before
            ):
                break
            assert time.monotonic() < deadline, f"runs served: {served_runs}, tags: {tags}"
            time.sleep(0.3)
        for run, rows in runs.items():
            served_tags = set(tags[run])
            assert {
                "roc_auc",
                "log_loss",
                "ne",
                "zip_bytes",
                "zstd_sparse_bytes",
                "forward_s_coo",
            } <= served_tags, run
            assert served_tags <= set(results.columns), (
                f"{run}: tags that are no results.csv column"
            )
            for tag in sorted(served_tags):
                query = urllib.parse.urlencode({"run": run, "tag": tag})
                events = get_json(
                    f"{url}/data/plugin/scalars/scalars?{query}"
                )  # [[wall_time, step, value], ...]
                steps = [step for _, step, _ in events]
                assert steps == [round(level * 100) for level in rows.sparsity_level], (run, tag)
                served = np.array([value for _, _, value in events], dtype=np.float32)
                np.testing.assert_array_equal(
                    served, rows[tag].to_numpy(np.float32), err_msg=f"{run}/{tag}"
                )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
