"""Every option of scripts/train.py and scripts/sweep.py that takes a number or a path, given a bad
value, fails with an error that names it, before any batch goes through the model.

The options are read from the CLIs' own parsers (LightningCLI / jsonargparse actions), so a numeric
or path option added later is picked up: `test_every_numeric_and_path_option_has_bad_values` fails
until BAD below says how to misuse it. "Names it": the message (exception text, or stderr for a
jsonargparse SystemExit) contains the option (`data.batch_size`); for a path option, the option or
the offending file's name. Lightning's own options (`trainer.*`, `checkpoint.*`) are covered by a
representative handful (LIGHTNING below), where Lightning's message names the bare argument
(`max_epochs`). "Before any heavy work": the model's forward pass is replaced by one that raises,
so a bad value that is accepted and reaches training or testing fails the test.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningCLI

from lit_dlrm import cli
from lit_dlrm.data import CriteoDataModule
from lit_dlrm.model import DLRM
from lit_dlrm.module import DLRMModule

SCRIPTS = {"train": cli.train, "sweep": cli.sweep}


@dataclass(frozen=True)
class Bad:
    value: (
        str  # may name a prepared file: {missing} {dir} {file} {garbage} {text} {empty} {yaml} ...
    )
    extra: tuple[str, ...] = ()  # further options the value needs (e.g. --data.source=kaggle)
    expect: str | None = None  # text the message must hold instead of the option's name


NOT_A_NUMBER = "abc"
KAGGLE, NPZ = ("--data.source=kaggle",), ("--data.source=dlrm_npz",)
TERABYTE = ("--data.source=terabyte",)
TORCHREC = ("--data.source=torchrec_npy",)
BAD: dict[str, list[Bad]] = {
    "seed_everything": [Bad(NOT_A_NUMBER), Bad("1.5")],
    "config": [Bad("{missing}"), Bad("{dir}"), Bad("{garbage}"), Bad("{yaml}")],
    "model.num_dense": [Bad("0"), Bad("12"), Bad(NOT_A_NUMBER)],
    "model.embedding_dim": [Bad("0"), Bad("-3"), Bad(NOT_A_NUMBER)],
    "model.bottom_mlp": [Bad("[0]"), Bad("[-4, 8]"), Bad(NOT_A_NUMBER)],
    "model.top_mlp": [Bad("[0]"), Bad("[64, -1]"), Bad(NOT_A_NUMBER)],
    "model.lr": [Bad("0"), Bad("-0.1"), Bad("nan"), Bad("inf"), Bad(NOT_A_NUMBER)],
    "data.path": [
        Bad("{missing}", KAGGLE),
        Bad("{dir}", KAGGLE),
        Bad("{garbage}", KAGGLE),
        Bad("{empty}", KAGGLE),
        Bad("{garbage}", NPZ),
        Bad("{sweep_ckpt}", NPZ),
        Bad("{missing}", TERABYTE),
        Bad("{file}", TERABYTE),
        Bad("{dir}", TERABYTE),
    ],
    "data.cache_dir": [Bad("{file}"), Bad("{file}/sub")],
    "data.batch_size": [Bad("0"), Bad("-1"), Bad("1.5"), Bad(NOT_A_NUMBER)],
    "data.eval_batch_size": [Bad("0"), Bad("-5"), Bad(NOT_A_NUMBER)],
    "data.num_workers": [Bad("-1"), Bad(NOT_A_NUMBER)],
    "data.max_ind_range": [Bad("0"), Bad("-3"), Bad(NOT_A_NUMBER)],
    "data.min_frequency": [Bad("0"), Bad("-1"), Bad(NOT_A_NUMBER)],
    "data.num_embeddings_per_feature": [
        Bad("[5, 5]", TORCHREC),
        Bad(str([0] * 26), TORCHREC),
        Bad(str([5] * 26), KAGGLE),
        Bad(NOT_A_NUMBER, TORCHREC),
    ],
    "data.synthetic_rows": [Bad("0"), Bad("-5"), Bad(NOT_A_NUMBER)],
    "data.max_table_size": [Bad("0"), Bad("-1"), Bad(NOT_A_NUMBER)],
    "data.seed": [Bad("-1"), Bad(NOT_A_NUMBER)],
    "data.sub_sample_rate": [
        *(Bad("-0.1", TERABYTE), Bad("1.0", TERABYTE), Bad("nan", TERABYTE), Bad("0.5")),
        Bad(NOT_A_NUMBER),
    ],
    "data.preprocess_workers": [Bad("0", TERABYTE), Bad("2"), Bad(NOT_A_NUMBER)],
    "out_dir": [Bad("{file}"), Bad("{file}/sub")],
    "sweep.sparsity_level": [
        Bad("[nan]"),
        Bad("[1.5]"),
        Bad("[-0.1]"),
        Bad("[]"),
        Bad(NOT_A_NUMBER),
    ],
    "sweep.sparse_block_shape": [
        *(Bad("[[0, 4]]"), Bad("[[1, -1]]"), Bad("[[1, 64]]"), Bad(NOT_A_NUMBER)),
    ],
    "sweep.weight_bits": [Bad("[0]"), Bad("[-8]"), Bad("[7]"), Bad(NOT_A_NUMBER)],
    "sweep.activation_sparsity": [Bad("[-0.5]"), Bad("[1.5]"), Bad("[nan]"), Bad(NOT_A_NUMBER)],
    "sweep.finetune_steps": [Bad("[-1]"), Bad(NOT_A_NUMBER)],
    "timing.batch_size": [Bad("0"), Bad("-2"), Bad(NOT_A_NUMBER)],
    "timing.warmup": [Bad("-1"), Bad(NOT_A_NUMBER)],
    "timing.repeats": [Bad("0"), Bad(NOT_A_NUMBER)],
}
CHECKPOINTS = [
    Bad("{missing}"),
    Bad("{dir}"),
    Bad("{truncated}"),
    Bad("{garbage}"),
    Bad("{text}"),
    Bad("{evil}"),
]
SCRIPT_BAD = {  # the same option name meaning a different file in each script
    ("train", "ckpt_path"): [*CHECKPOINTS, Bad("{sweep_ckpt}"), Bad("{other_arch_ckpt}")],
    ("sweep", "ckpt_path"): [
        *CHECKPOINTS,
        Bad("{wrong_arch}"),
        Bad("{other_tables}", expect="checkpoint's"),
    ],
}
# Lightning's own options: a representative handful (its messages name the bare argument).
LIGHTNING: dict[str, dict[str, list[Bad]]] = {
    "train": {
        "trainer.max_epochs": [Bad("-5"), Bad(NOT_A_NUMBER)],
        "trainer.devices": [Bad("0"), Bad("-3")],
        "trainer.val_check_interval": [Bad("-0.5"), Bad("1.5"), Bad("nan")],
        "trainer.log_every_n_steps": [Bad("0"), Bad("-1"), Bad(NOT_A_NUMBER)],
        "trainer.limit_train_batches": [Bad("-1"), Bad("1.5")],
        "trainer.limit_val_batches": [Bad("-1")],
        "checkpoint.save_top_k": [Bad("-2")],
        "checkpoint.every_n_epochs": [Bad("-1")],
        "checkpoint.dirpath": [Bad("{file}")],
    },
    "sweep": {
        "trainer.devices": [Bad("0")],
        "trainer.limit_test_batches": [Bad("-1"), Bad("1.5")],
    },
}
LIGHTNING_PREFIXES = ("trainer.", "checkpoint.")

# ------------------------------------------------------------------------------------------------
# the options, from the parsers


class _Parsed(Exception):
    pass


def parser_of(script: str):
    """The script's LightningCLI parser, caught before it parses anything."""

    def grab(self, parser, args):
        raise _Parsed(parser)

    original = LightningCLI.parse_arguments
    LightningCLI.parse_arguments = grab
    try:
        SCRIPTS[script]([])
    except _Parsed as caught:
        return caught.args[0]
    finally:
        LightningCLI.parse_arguments = original
    raise AssertionError(f"scripts/{script}.py did not build a parser")


def _mentions(hint, kinds: tuple[type, ...]) -> bool:
    if hint in kinds:
        return True
    return any(_mentions(arg, kinds) for arg in typing.get_args(hint) if arg is not bool)


def numeric_and_path_options(script: str) -> set[str]:
    """Options of `script` whose values are (or contain) numbers or file system paths."""
    found = set()
    for action in parser_of(script)._actions:
        dest, hint = action.dest, getattr(action, "_typehint", None)
        if isinstance(action, ActionConfigFile):
            found.add(dest)
        elif hint is None or dest.endswith(".help") or type(action).__name__ == "ActionLink":
            continue
        elif dest.split(".")[-1].endswith(("path", "dir")) or _mentions(hint, (Path, int, float)):
            found.add(dest)
    return found


OPTIONS = {script: numeric_and_path_options(script) for script in SCRIPTS}


def is_path_option(option: str) -> bool:
    return option == "config" or option.split(".")[-1].endswith(("path", "dir"))


def cases() -> list:
    out = []
    for script, options in OPTIONS.items():
        for option in sorted(options):
            if option.startswith(LIGHTNING_PREFIXES):
                continue
            bads = SCRIPT_BAD.get((script, option), BAD.get(option, []))
            if (
                script != "train"
                and option in OPTIONS["train"]
                and (script, option) not in SCRIPT_BAD
            ):
                bads = bads[
                    :1
                ]  # the same class as in train.py (data.*, config, seed): tried there in full
            for bad in bads:
                out.append(pytest.param(script, option, bad, id=f"{script}-{option}={bad.value}"))
        for option, bads in LIGHTNING[script].items():
            out.extend(
                pytest.param(script, option, bad, id=f"{script}-{option}={bad.value}")
                for bad in bads
            )
    # jsonargparse reads --config as UTF-8 text unguarded: lit_dlrm.cli.CLI names it instead.
    out.append(pytest.param("sweep", "config", Bad("{garbage}"), id="sweep-config={garbage}"))
    return out


def test_every_numeric_and_path_option_has_bad_values():
    """A new numeric or path option must get bad values in BAD (or LIGHTNING / SCRIPT_BAD)."""
    for script, options in OPTIONS.items():
        ours = {o for o in options if not o.startswith(LIGHTNING_PREFIXES)}
        missing = sorted(o for o in ours if not SCRIPT_BAD.get((script, o), BAD.get(o)))
        assert not missing, f"{script}: no bad values for {missing}; add them to BAD in {__file__}"
        stale = sorted(set(LIGHTNING[script]) - options)
        assert not stale, f"scripts/{script}.py has no option {stale} any more"
    assert {"data.batch_size", "model.lr", "ckpt_path", "config"} <= OPTIONS[
        "train"
    ]  # the enumeration works
    assert {"sweep.sparsity_level", "timing.repeats", "out_dir", "data.path"} <= OPTIONS["sweep"]
    unused = set(BAD) - OPTIONS["train"] - OPTIONS["sweep"]
    assert not unused, f"BAD names options no script has: {sorted(unused)}"


# ------------------------------------------------------------------------------------------------
# files to misuse


class _Exploit:
    def __reduce__(self):
        return (print, ("this would have run arbitrary code",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_data_args) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-files")
    cache = next(a for a in tiny_data_args if a.startswith("--data.cache_dir=")).split("=", 1)[1]
    data = CriteoDataModule(synthetic_rows=14000, max_table_size=300, cache_dir=cache)
    data.setup()
    tables = data.table_sizes
    torch.manual_seed(0)
    good = DLRMModule(tables).model.state_dict()
    f = {
        name: root / name
        for name in (
            "sweep_ckpt",
            "truncated",
            "garbage",
            "text",
            "evil",
            "empty",
            "yaml",
            "file",
            "wrong_arch",
            "other_tables",
            "other_arch_ckpt",
        )
    }
    torch.save(good, f["sweep_ckpt"])  # a bare state_dict: sweepable, not resumable
    f["truncated"].write_bytes(f["sweep_ckpt"].read_bytes()[:4096])
    f["garbage"].write_bytes(bytes(range(256)) * 16)
    f["text"].write_text("not a checkpoint\n")
    torch.save({"state_dict": good, "payload": _Exploit()}, f["evil"])
    f["empty"].write_bytes(b"")
    f["yaml"].write_text("model: [unclosed\n  lr: 3\n")
    f["file"].write_text("a file where a directory is expected\n")
    wrong = dict(good)
    wrong["top_l.0.weight"] = torch.zeros(512, 99)  # a top MLP that fits no interaction
    torch.save(wrong, f["wrong_arch"])
    torch.save(DLRMModule([7] * 26).model.state_dict(), f["other_tables"])
    other = DLRMModule(
        tables, embedding_dim=8
    ).state_dict()  # a Lightning checkpoint of another width
    torch.save(
        {"pytorch-lightning_version": "2.6.0", "state_dict": other, "epoch": 0},
        f["other_arch_ckpt"],
    )
    (root / "dir").mkdir()
    return {
        **{k: str(v) for k, v in f.items()},
        "dir": str(root / "dir"),
        "missing": str(root / "missing.pt"),
        "root": str(root),
    }


class _Heavy(Exception):
    pass


@pytest.fixture
def no_forward(monkeypatch):
    def forward(self, *args, **kwargs):
        raise _Heavy("a batch reached the model: the bad value was not refused before the work")

    monkeypatch.setattr(DLRM, "forward", forward)


# ------------------------------------------------------------------------------------------------
# the cases


def base_args(script: str, files: dict, tiny_data_args: list[str]) -> list[str]:
    root = files["root"]
    common = [*tiny_data_args, f"--trainer.default_root_dir={root}"]
    if script == "train":
        return [
            *common,
            f"--trainer.logger.init_args.save_dir={root}/runs",
            "--trainer.enable_progress_bar=false",
        ]
    return [
        *common,
        f"--ckpt_path={files['sweep_ckpt']}",
        f"--out_dir={root}/sweep",
        "--sweep.sparsity_level=[0.5]",
        "--timing.repeats=1",
        "--timing.warmup=0",
    ]


@pytest.mark.parametrize("script, option, bad", cases())
def test_bad_value_is_refused_naming_the_option(
    script, option, bad, files, tiny_data_args, no_forward, capsys
):
    value = bad.value.format(**files)
    args = [*base_args(script, files, tiny_data_args), *bad.extra, f"--{option}={value}"]
    try:
        SCRIPTS[script](args)
    except _Heavy as err:
        pytest.fail(f"--{option}={value} was accepted: {err}")
    except SystemExit as err:
        message = f"{err.code}\n{capsys.readouterr().err}"
    except Exception as err:  # noqa: BLE001 (any clear error will do; its text is checked below)
        message = f"{type(err).__name__}: {err}"
    else:
        pytest.fail(f"--{option}={value} was accepted and the run finished")
    names = [bad.expect] if bad.expect else [option]
    if option.startswith(LIGHTNING_PREFIXES):
        names.append(option.split(".")[-1])
    if is_path_option(option) and not bad.expect:
        names.append(Path(value).name)
    assert any(name in message for name in names), (
        f"--{option}={value}: the error names none of {names}:\n{message[-2000:]}"
    )
    assert "this would have run arbitrary code" not in capsys.readouterr().out
