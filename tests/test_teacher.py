"""The synthetic teacher's presets: one name everywhere, validated, in the cache key; the
decomposition of its AUC (tiny sizes, tmp_path caches)."""

import typing

import pytest

from lit_dlrm import cli
from lit_dlrm.data import CriteoDataModule, SyntheticConfig
from lit_dlrm.data.synthetic import TEACHERS, TeacherName, config_dict

TINY = dict(synthetic_rows=20_000, max_table_size=500)


def test_one_name_per_preset():
    assert typing.get_args(TeacherName) == tuple(TEACHERS)
    assert SyntheticConfig().teacher == "default"


def test_unknown_preset_is_refused_naming_the_option(capsys):
    with pytest.raises(ValueError, match=r"data\.teacher: expected one of 'default', 'inter.*'bog"):
        SyntheticConfig(teacher="bog")
    with pytest.raises(SystemExit):
        cli.train(["--data.teacher=bog", "--trainer.fast_dev_run=true"])
    err = capsys.readouterr().err
    assert "data.teacher" in err and "bog" in err


def test_the_cache_key_holds_the_preset(tmp_path):
    a, b = (config_dict(SyntheticConfig(teacher=t)) for t in TEACHERS)
    assert a["teacher"] != b["teacher"] and a["scales"] != b["scales"]
    dirs = set()
    for teacher in TEACHERS:
        dm = CriteoDataModule(cache_dir=str(tmp_path), teacher=teacher, **TINY)
        dm.setup()
        assert dm.meta["teacher"]["name"] == teacher and dm.hparams["teacher"] == teacher
        dirs.add(dm.cache_path)
    assert len(dirs) == 2


def test_stronger_interactions_carry_more_of_the_auc(tmp_path):
    gap = {}
    for teacher in TEACHERS:
        dm = CriteoDataModule(cache_dir=str(tmp_path), teacher=teacher, **TINY)
        dm.setup()
        d = dm.meta["teacher"]["auc_decomposition"]["test"]
        assert d["dense_only"] < d["main_effects"] < d["bayes"]
        gap[teacher] = d["bayes"] - d["main_effects"]
    assert gap["interactions"] > gap["default"] + 0.02
