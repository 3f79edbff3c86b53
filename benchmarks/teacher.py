"""The synthetic teacher's AUC decomposition next to trained DLRMs, for every teacher preset.

    python -m benchmarks.teacher                              # both presets, the default recipe
    python -m benchmarks.teacher --teacher default --max_epochs 1 3 --lr 0.02 --batch_size 512

For each preset (``--data.teacher``), on the test split of the default-sized data: the AUC of the
teacher's logit cut down (``Teacher.auc_decomposition``: dense term only; dense + the categories'
own effects, no pairwise term; the whole logit, the Bayes-optimal ranking, with its log loss),
then DLRM trained by ``lit-dlrm-train`` with the default recipe (``configs/train.yaml``; the best
validation checkpoint, scored on the test split) with ``--model.interaction=dot`` and ``cat``,
for each of ``--max_epochs``, ``--lr`` (the recipe's Adagrad learning rate) and ``--batch_size``.
``cat`` is the "interaction switched off" baseline: the same inputs, tables and MLPs, the bottom
output and the 26 embeddings concatenated without their pairwise products (facebookresearch/dlrm's
``--arch-interaction-op=cat``). Each run trains into ``--out`` and is reused when it finished
there (delete it to retrain). Writes ``benchmarks/results/teacher.md`` (and ``.csv``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, command_line, write_table

OUT = Path("benchmarks/out/teacher")
TEACHERS = ("default", "interactions")
INTERACTIONS = ("dot", "cat")


def four_places(value) -> str:
    """A table cell: floats to 4 decimals (AUC and log loss differ in the third)."""
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


LR, BATCH = 0.005, 2048  # configs/train.yaml's --model.lr, CriteoDataModule's --data.batch_size


def run_dir(
    teacher: str,
    interaction: str,
    max_epochs: int,
    out: Path = OUT,
    lr: float = LR,
    batch_size: int = BATCH,
) -> Path:
    name = f"{teacher}-{interaction}-e{max_epochs}{'' if lr == LR else f'-lr{lr:g}'}"
    return out / (name if batch_size == BATCH else f"{name}-b{batch_size}")


def test_metrics(directory: Path) -> dict[str, float] | None:
    """test/auc and test/log_loss of the finished training run under ``directory`` (None: none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(directory.glob("train/version_*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "test/auc" in acc.Tags()["scalars"]:
            return {k: acc.Scalars(f"test/{k}")[-1].value for k in ("auc", "log_loss")}
    return None


def trained(
    teacher: str,
    interaction: str,
    max_epochs: int = 1,
    out: Path = OUT,
    lr: float = LR,
    batch_size: int = BATCH,
) -> Path:
    """The run directory of DLRM trained by ``lit-dlrm-train`` (default recipe, but for the
    preset, the interaction, the epochs, the learning rate and the batch size) on ``teacher``'s
    data; trained unless finished."""
    from lit_dlrm import cli

    directory = run_dir(teacher, interaction, max_epochs, out, lr, batch_size)
    if test_metrics(directory) is None:
        cli.train(
            [
                f"--data.teacher={teacher}",
                f"--model.interaction={interaction}",
                f"--trainer.max_epochs={max_epochs}",
                f"--model.lr={lr}",
                f"--data.batch_size={batch_size}",
                f"--trainer.logger.init_args.save_dir={directory}",
                "--trainer.enable_progress_bar=false",
            ]
        )
    return directory


def best_checkpoint(directory: Path) -> Path:
    """The best validation checkpoint of the training run under ``directory``."""
    (best,) = sorted(directory.glob("train/version_*/checkpoints/best-*.ckpt"))[-1:]
    return best


def measure(
    teachers: list[str], epochs: list[int], out: Path, lrs=(LR,), batch_sizes=(BATCH,)
) -> list[dict]:
    from lit_dlrm.data import CriteoDataModule

    rows = []
    for teacher in teachers:
        data = CriteoDataModule(teacher=teacher)
        data.setup()
        cut = data.meta["teacher"]["auc_decomposition"]["test"]
        bayes = data.teacher_metrics("test")
        row = {"teacher": teacher}
        rows += [
            {**row, "ranking": "teacher: dense term only", "auc": cut["dense_only"]},
            {**row, "ranking": "teacher: main effects (no pairwise)", "auc": cut["main_effects"]},
            {**row, "ranking": "teacher: Bayes (whole logit)", **bayes},
        ]
        for lr, batch_size, max_epochs in itertools.product(lrs, batch_sizes, epochs):
            for interaction in INTERACTIONS:
                run = trained(teacher, interaction, max_epochs, out, lr, batch_size)
                what = f"DLRM {interaction}, {max_epochs} epoch{'s' * (max_epochs > 1)}"
                what += "" if lr == LR else f", lr {lr:g}"
                what += "" if batch_size == BATCH else f", batch {batch_size}"
                rows.append({**row, "ranking": what, **test_metrics(run)})
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", nargs="+", choices=TEACHERS, default=list(TEACHERS))
    parser.add_argument("--max_epochs", nargs="+", type=int, default=[1])
    parser.add_argument("--lr", nargs="+", type=float, default=[LR])
    parser.add_argument("--batch_size", nargs="+", type=int, default=[BATCH])
    parser.add_argument("--out", type=Path, default=OUT, help="training runs (reused)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = measure(args.teacher, args.max_epochs, args.out, args.lr, args.batch_size)
    markdown = write_table(
        "teacher",
        "Synthetic teacher: AUC decomposition and trained DLRM, test split",
        rows,
        ["teacher", "ranking", "auc", "log_loss", "positive_rate"],
        command_line("benchmarks.teacher", argv),
        "Default data (2M rows, tables capped at 20,000); DLRM: configs/train.yaml's recipe"
        f" (Adagrad, lr {LR:g} and batch {BATCH} unless the row says), the best validation"
        " checkpoint;"
        " `cat` = the same model without the pairwise products. Each DLRM row is one training"
        " run, made by this command or an earlier one into --out and reused.",
        args.results,
        shown=["teacher", "ranking", "auc", "log_loss"],
        value=four_places,
    )
    print(markdown)


if __name__ == "__main__":
    main()
