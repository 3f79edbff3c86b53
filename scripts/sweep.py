"""The sparsity sweep: ``python scripts/sweep.py [--ckpt_path PATH] [--sweep.* --data.* --trainer.*]``.

With no arguments it takes the best checkpoint of the latest ``scripts/train.py`` run and runs the
default 80-point grid (norms L1, L2 x block shapes (1, 1), (1, 4) x 20 levels) on the test split,
through three callbacks during ``trainer.test``: :class:`callbacks.Sparsify`,
:class:`callbacks.CheckpointCompression` and :class:`callbacks.SparseCooTiming`. Results go to
``--out_dir``: the reference's three CSVs, ``results.csv``, PNG plots and TensorBoard runs. A
killed sweep run again computes only the missing points.

``--ckpt_path`` also takes a facebookresearch/dlrm ``--save-model`` file or a bare state_dict;
the data options must then describe the data it was trained on (the table sizes are checked).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not

from callbacks import CheckpointCompression, SparseCooTiming, Sparsify  # noqa: E402
from lit_dlrm.checkpoint import latest_checkpoint  # noqa: E402
from lit_dlrm.cli import CLI  # noqa: E402
from lit_dlrm.data import CriteoDataModule  # noqa: E402
from lit_dlrm.module import DLRMModule  # noqa: E402
from lit_dlrm.report import write_report  # noqa: E402
from lit_dlrm.sparsity.grid import make_grid  # noqa: E402
from lit_dlrm.sweep import run_sweep  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sweep.yaml"


def trained_model(ckpt_path: str = "latest") -> DLRMModule:
    """The model to sweep: ``latest`` is the best checkpoint of the newest run under runs/train."""
    return DLRMModule.from_weights(latest_checkpoint() if ckpt_path == "latest" else ckpt_path)


class SweepCLI(CLI):
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
            parser.add_lightning_class_args(callback, name)
            parser.link_arguments("out_dir", f"{name}.out_dir")


def main(args: list[str] | None = None) -> None:
    cli = SweepCLI(
        trained_model,
        CriteoDataModule,
        run=False,
        args=args,
        parser_kwargs={"default_config_files": [str(DEFAULT_CONFIG)]},
        save_config_callback=None,
    )
    model, data, config = cli.model, cli.datamodule, cli.config
    sizes = [table.num_embeddings for table in model.model.emb_l]
    if list(data.table_sizes) != sizes:
        raise SystemExit(
            f"--data: the data's table sizes {list(data.table_sizes)} differ from the checkpoint's {sizes}; "
            "pass the --data.* options the model was trained with"
        )
    grid = make_grid(
        **config.sweep.as_dict(), embedding_dim=model.hparams.embedding_dim, min_rows=min(sizes)
    )
    run_sweep(cli.trainer, model, data, grid, config.out_dir)
    if cli.trainer.is_global_zero:
        table = write_report(config.out_dir)
        print(
            f"{len(table)} grid points in {config.out_dir}/results.csv; plots and tensorboard/ beside it"
        )


if __name__ == "__main__":
    main()
