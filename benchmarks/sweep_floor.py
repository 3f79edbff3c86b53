"""The sweep's compute floor: one plain ``torch.no_grad`` forward over a checkpoint's test split.

    python -m benchmarks.sweep_floor CKPT --out floor.json [--repeats 3]

The batches are those the sweep tests on (the checkpoint's data options, its datamodule's test
loader: the same rows and batch size), read into memory first, untimed; the network (the
checkpoint's weights, unpruned) then runs over all of them under ``torch.no_grad``, at torch's
default threads as the sweep runs, ``repeats`` times. Writes ``forward_s`` (the median pass),
its min and max, the rows, the batch size and the threads as JSON. A sweep that ran T tests
(:func:`tests_run`) has the floor F = T x ``forward_s``: a point cannot cost less than its test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lit_dlrm.checkpoint import datamodule_options
from lit_dlrm.data import CriteoDataModule
from lit_dlrm.module import DLRMModule
from lit_dlrm.paths import write_json
from lit_dlrm.sweep.results import METRICS_CSV, read_table, rows_tested


def tests_run(out_dir: str | Path) -> int:
    """The tests a sweep in ``out_dir`` ran: its metric rows not copied from another point."""
    return len(rows_tested(read_table(out_dir, METRICS_CSV)))


def checkpoint_data(ckpt_path: str | Path) -> CriteoDataModule:
    """The data module ``ckpt_path`` was trained with, set up for its test split (the rows and
    batch size the sweep tests on); ValueError if the checkpoint holds no data options."""
    options = datamodule_options(ckpt_path)
    if options is None:
        raise ValueError(f"{ckpt_path}: holds no data options (not a lit_dlrm checkpoint)")
    data = CriteoDataModule(**options)
    data.prepare_data()
    data.setup("test")
    return data


@torch.no_grad()
def forward_seconds(ckpt_path: str | Path, repeats: int = 3) -> dict:
    """Seconds of plain forward passes over the test split of ``ckpt_path``'s data (see the
    module's docstring), and what they ran on."""
    data = checkpoint_data(ckpt_path)
    batches = [(d, s) for d, s, _ in data.dataloader("test", rank=0, world_size=1)]
    network = DLRMModule.from_weights(str(ckpt_path)).model.eval()
    for table in network.emb_l:  # in memory, as the sweep tests its (pruned) copies; not mapped
        table.weight.data = table.weight.data.clone()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for dense, sparse in batches:
            network(dense, sparse)
        seconds.append(time.perf_counter() - start)
    return {
        "forward_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": repeats,
        "rows": sum(int(dense.shape[0]) for dense, _ in batches),
        "batch_size": int(batches[0][0].shape[0]) if batches else 0,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    result = forward_seconds(args.ckpt_path, args.repeats)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
