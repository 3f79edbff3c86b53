"""The Kaggle-shaped ``train.txt`` writer (``python -m lit_dlrm.data.synthetic write``): every
table value present at full size, a shorter file a prefix of it, deterministic, atomic."""

import json

import numpy as np
import pytest

from lit_dlrm.data import KaggleFileConfig, Teacher
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.data.synthetic import BLOCK_ROWS, main


class SmallKaggle(KaggleFileConfig):
    """Kaggle's shape scaled down: tables of a 500th of Kaggle's, all present at 3 blocks."""

    FULL_ROWS = 3 * BLOCK_ROWS + 1000
    SIZES = tuple(max(3, t // 500) for t in KAGGLE_TABLE_SIZES)


def distinct_raw_values(config: KaggleFileConfig) -> list[int]:
    values = [set() for _ in KAGGLE_TABLE_SIZES]
    for block in Teacher.from_config(config).blocks():
        for j, seen in enumerate(values):
            seen.update(np.unique(block.cat[:, j]).tolist())  # raw 0: the missing value
    return [len(v) for v in values]


def test_every_value_is_present_at_full_size_and_not_before():
    full = SmallKaggle(rows=SmallKaggle.FULL_ROWS)
    assert distinct_raw_values(full) == list(SmallKaggle.SIZES)  # C3's 20,262 included
    short = distinct_raw_values(SmallKaggle(rows=BLOCK_ROWS))
    big = [j for j, t in enumerate(SmallKaggle.SIZES) if t > 10_000]
    assert big and all(short[j] < SmallKaggle.SIZES[j] for j in big)


def test_a_shorter_file_is_a_prefix_of_the_full_one():
    first = next(Teacher.from_config(SmallKaggle(rows=SmallKaggle.FULL_ROWS)).blocks())
    alone = next(Teacher.from_config(SmallKaggle(rows=BLOCK_ROWS)).blocks())
    for name in ("label", "dense", "cat"):
        np.testing.assert_array_equal(getattr(first, name), getattr(alone, name))


def test_write_command_is_deterministic(tmp_path, capsys):
    outs = []
    for name in ("a.txt", "b.txt"):
        main(["write", str(tmp_path / name), "--lines", "3000", "--seed", "4"])
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and outs[0]["lines"] == 3000
    lines = (tmp_path / "a.txt").read_bytes().splitlines()
    assert len(lines) == 3000 and all(line.count(b"\t") == 39 for line in lines)
    assert not list(tmp_path.glob(".*.tmp"))  # written beside the name, then renamed
    with pytest.raises(SystemExit):
        main(["write", str(tmp_path / "c.txt"), "--lines", "0"])
