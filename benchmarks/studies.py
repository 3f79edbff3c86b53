"""The sweep's four default studies on a teacher preset: summary tables from one train + sweep.

    python -m benchmarks.studies --teacher default
    python -m benchmarks.studies --teacher interactions

Trains DLRM with the default recipe on the preset's data (``benchmarks.teacher.trained``: the
same run that ``benchmarks.teacher`` reports, reused when it finished), sweeps its best
checkpoint with ``lit-dlrm-sweep`` (``configs/sweep.yaml``: the reference grid and the four
studies; ``--out``/<preset>/sweep, resumed if it stopped) and summarises the sweep's
``results.csv``: test AUC per level of per-table against global thresholds, int8 / int4 tables,
300 fine-tuning steps, and activation sparsity. Writes ``benchmarks/results/studies_<preset>.md``
(and ``.csv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmarks.harness import command_line, write_table
from benchmarks.teacher import OUT, RESULTS, TEACHERS, best_checkpoint, four_places, trained

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
# column -> the study's points: (norm, block shape, threshold, weight_bits, finetune_steps)
SERIES = {
    "per table L2 (1, 4)": ("L2", "(1, 4)", "per_table", 32, 0),
    "global L2 (1, 4)": ("L2", "(1, 4)", "global", 32, 0),
    "per table L1 (1, 1)": ("L1", "(1, 1)", "per_table", 32, 0),
    "global L1 (1, 1)": ("L1", "(1, 1)", "global", 32, 0),
    "int8 L2 (1, 4)": ("L2", "(1, 4)", "per_table", 8, 0),
    "int4 L2 (1, 4)": ("L2", "(1, 4)", "per_table", 4, 0),
    "fine-tuned 300 steps L2 (1, 4)": ("L2", "(1, 4)", "per_table", 32, 300),
}
ACTIVATION = (0.0, 0.5, 0.8, 0.95)


def swept(teacher: str, out: Path = OUT) -> Path:
    """The sweep directory of ``teacher``'s default model, swept unless complete."""
    from lit_dlrm import cli

    directory = out / f"{teacher}-sweep"
    best = best_checkpoint(trained(teacher, "dot", 1, out))
    cli.sweep([f"--ckpt_path={best}", f"--out_dir={directory}"])  # resumes; no-op when complete
    return directory


def auc(results: pd.DataFrame, level: float, norm, shape, threshold, bits, steps, act=0.0):
    hit = results[
        (results.norm == norm)
        & (results.sparse_block_shape == shape)
        & (results.threshold == threshold)
        & (results.weight_bits == bits)
        & (results.finetune_steps == steps)
        & (results.activation_sparsity == act)
        & ((results.sparsity_level - level).abs() < 1e-9)
    ]
    return float(hit.roc_auc.iloc[0]) if len(hit) else None


def summarise(results: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(AUC per level and study series, AUC per table level and activation sparsity)."""
    levels = [
        {"level": level, **{name: auc(results, level, *s) for name, s in SERIES.items()}}
        for level in (0.0, *LEVELS)
    ]
    activation = [
        {
            "table level, L2 (1, 4)": level,
            **{
                f"z zeroed {a:g}": auc(results, level, "L2", "(1, 4)", "per_table", 32, 0, a)
                for a in ACTIVATION
            },
        }
        for level in (0.0, 0.9)
    ]
    return levels, activation


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=TEACHERS, required=True)
    parser.add_argument("--out", type=Path, default=OUT, help="training runs and sweeps (reused)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = pd.read_csv(swept(args.teacher, args.out) / "results.csv")
    levels, activation = summarise(results)
    rows = [{"table": "levels", **r} for r in levels]
    rows += [{"table": "activation", **r} for r in activation]
    columns = ["table", *levels[0], *activation[0]]
    markdown = write_table(
        f"studies_{args.teacher}",
        f"The sweep's studies on the '{args.teacher}' teacher, test AUC",
        rows,
        columns,
        command_line("benchmarks.studies", argv),
        "The default model (1 epoch, configs/train.yaml), swept with configs/sweep.yaml;"
        " level 0 is the unpruned model; empty: not in the studies' grid.",
        args.results,
        value=four_places,
    )
    print(markdown)


if __name__ == "__main__":
    main()
