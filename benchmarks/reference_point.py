"""The reference approach's grid points, measured on a real checkpoint and its test split.

    python -m benchmarks.reference_point CKPT --out reference.json [--levels 0.5 0.95]

PyTorch's DLRM benchmark runs a grid point in four steps (../shared/reference/REFERENCE.md
sections 1-4), each timed here on the checkpoint's network, its tables in memory:

* sparsify: ``DataNormSparsifier`` ``step()`` + ``squash_mask()`` on the 26 tables, in place;
* disk: ``torch.save`` of the state dict, then ``zipfile`` deflate at its default level;
* metrics: the reference-style test loop over the test split
  (:func:`benchmarks.evaluate.reference_test`: per-sample rows, its 7 loader workers, no
  ``no_grad``, scikit-learn metrics);
* forward time: 100 passes over one test batch of 16384 rows, dense and COO
  (:func:`callbacks.timing.coo_forward`) each, as ``evaluate_forward_time.py`` runs them.

One point per series the reference runs (L1 (1, 1), L1 (1, 4), L2 (1, 4); it skips L2 (1, 1)) at
each of ``--levels``, the dense tables restored (untimed) between points. Its cost falls with the
level (the zip and the COO pass shrink; sparsify and the test loop do not), so each measured
level stands for an equal run of the grid's 20 levels (:func:`stands_for`; the default: 0.5 for
0.0-0.9, 0.95 for 0.91-1.0). Writes per point its step times and test AUC, and ``grid_s``: its
60 points, each timed as the measured point of its series that stands for its level. ``--out``
is rewritten after every point (``grid_s`` comes last, with the last point): a run stopped and
started again measures only the points it lacks, if its checkpoint file, levels, test rows,
workers, threads, torch and CPU are those of the points already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.compress import zipfile_size
from benchmarks.evaluate import BATCH, REFERENCE_WORKERS, reference_test
from benchmarks.harness import cpu_model
from benchmarks.sparsify import REFERENCE_COMBOS
from benchmarks.sweep_floor import checkpoint_data
from callbacks.timing import coo_forward, time_runs
from lit_dlrm.module import DLRMModule
from lit_dlrm.paths import write_json
from lit_dlrm.sweep.grid import DEFAULT_LEVELS

FORWARD_RUNS = 100  # the reference's passes per model; it drops the first


def stands_for(levels: list[float]) -> dict[float, float]:
    """Each of the grid's levels -> the measured level that stands for it: the sorted ``levels``
    split the grid's 20 levels into equal consecutive runs."""
    runs = sorted(levels)
    return {
        level: runs[i * len(runs) // len(DEFAULT_LEVELS)] for i, level in enumerate(DEFAULT_LEVELS)
    }


def point_seconds(ref: dict, norm: str, block: str, level: float) -> float | None:
    """The reference's time for grid point (norm, block, level) from its measured points in
    ``ref`` (what :func:`measure` returns); None for a point it does not run."""
    measured = stands_for(ref["levels"]).get(level)
    for p in ref["points"]:
        if (p["norm"], p["sparse_block_shape"], p["sparsity_level"]) == (norm, block, measured):
            return p["point_s"]
    return None


def sparsify(tables: list[torch.nn.Parameter], norm: str, block, level: float) -> float:
    """Seconds of DataNormSparsifier step + squash_mask on ``tables``, pruned in place."""
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier

    sparsifier = DataNormSparsifier(sparsity_level=level, sparse_block_shape=block, norm=norm)
    for i, table in enumerate(tables):
        sparsifier.add_data(f"emb_l_{i}", table)
    start = time.perf_counter()
    sparsifier.step()
    sparsifier.squash_mask()
    return time.perf_counter() - start


def measure(ckpt_path: Path, levels: list[float], out: Path) -> dict:
    """Each reference point's step times (see the module's docstring) and the grid's estimate;
    the points measured so far in ``out`` after each point, those already there kept."""
    data = checkpoint_data(ckpt_path)
    start, stop = data.split_range("test")
    stat = ckpt_path.stat()
    result = {
        "ckpt": str(ckpt_path.resolve()),
        "ckpt_bytes_mtime": [stat.st_size, stat.st_mtime_ns],
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "levels": levels,
        "grid_points": len(REFERENCE_COMBOS) * len(DEFAULT_LEVELS),
        "test_rows": stop - start,
        "workers": REFERENCE_WORKERS,
        "threads": torch.get_num_threads(),
        "points": [],
    }
    # before the network is loaded: refusing another measurement's file costs nothing
    done = {_key(p): p for p in earlier_points(out, result)}
    network = DLRMModule.from_weights(str(ckpt_path)).model.eval()
    tables = []
    for table in network.emb_l:  # in memory, as the reference loads its checkpoint
        table.weight = torch.nn.Parameter(table.weight.data.clone(), requires_grad=False)
        tables.append(table.weight)
    dense = [t.data.clone() for t in tables]  # to restore between points, untimed
    dense_in, sparse_in, _ = next(iter(data.dataloader("test", rank=0, world_size=1)))
    batch = (dense_in[:BATCH], sparse_in[:BATCH])  # the reference's fixed batch of 16384
    for norm, block in REFERENCE_COMBOS:
        for level in levels:
            point = {"norm": norm, "sparse_block_shape": str(block), "sparsity_level": level}
            if _key(point) in done:
                result["points"].append(done[_key(point)])
                continue
            for table, original in zip(tables, dense):
                table.data.copy_(original)
            point["sparsify_s"] = sparsify(tables, norm, block, level)
            with tempfile.TemporaryDirectory(dir=ckpt_path.parent) as tmp:
                zipped = zipfile_size(network.state_dict(), tmp, measure_read=False)
            point["zip_s"], point["zip_mib"] = zipped.write_s, zipped.bytes / 2**20
            t0 = time.perf_counter()
            point["roc_auc"] = reference_test(
                network, str(data.cache_path), stop - start, REFERENCE_WORKERS, start
            )
            point["test_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for run in (lambda: network(*batch), lambda: coo_forward(network, *batch)):
                time_runs(run, torch.device("cpu"), 1, FORWARD_RUNS - 1)
            point["forward_s"] = time.perf_counter() - t0
            steps = ("sparsify_s", "zip_s", "test_s", "forward_s")
            point["point_s"] = sum(point[k] for k in steps)
            result["points"].append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
            write_json(out, result)
    grid = [(n, str(b), level) for n, b in REFERENCE_COMBOS for level in DEFAULT_LEVELS]
    return {**result, "grid_s": sum(point_seconds(result, *point) for point in grid)}


def _key(point: dict) -> tuple:
    return point["norm"], point["sparse_block_shape"], point["sparsity_level"]


def earlier_points(out: Path, result: dict) -> list[dict]:
    """The points an earlier run of the same measurement (every field of ``result`` but its
    points) left in ``out``; none when there is no ``out``. Raises ValueError naming ``out`` and
    what differs when it holds another measurement's points."""
    if not out.is_file():
        return []
    earlier = json.loads(out.read_text())
    differ = [
        f"{k} {earlier.get(k)!r} there, {v!r} here"
        for k, v in result.items()
        if k != "points" and earlier.get(k) != v
    ]
    if differ:
        raise ValueError(
            f"{out}: holds the points of another measurement ({'; '.join(differ)}); delete it "
            "or give another --out"
        )
    return earlier["points"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.95])
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not all(0.0 <= level <= 1.0 for level in args.levels):
        parser.error(f"--levels: expected values in [0, 1], got {args.levels}")
    write_json(args.out, measure(args.ckpt_path, args.levels, args.out))


if __name__ == "__main__":
    main()
