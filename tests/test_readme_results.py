"""The README's result blocks are the tables of the results files they name, verbatim."""

from pathlib import Path

import pytest

from benchmarks import readme

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "x\n<!-- results: r.md -->\n| a |\n|---|\n| 1 |\n<!-- /results -->\ny\n"


def test_every_block_equals_its_file():
    text = (ROOT / "README.md").read_text()
    assert readme.render(text, ROOT) == text, "run python -m benchmarks.readme"


def test_a_tampered_block_fails(tmp_path):
    (tmp_path / "r.md").write_text("# t\n\n| a |\n|---|\n| 1 |\n")
    assert readme.render(SAMPLE, tmp_path) == SAMPLE
    tampered = SAMPLE.replace("| 1 |", "| 0 |")
    assert readme.render(tampered, tmp_path) == SAMPLE


def test_a_missing_file_or_an_open_marker_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="README.md:2: results file .*nope.md"):
        readme.render("x\n<!-- results: benchmarks/results/nope.md -->\n<!-- /results -->\n", ROOT)
    with pytest.raises(ValueError, match="matching pairs"):
        readme.render("<!-- results: benchmarks/results/run_small.md -->\n| a |\n", ROOT)


def test_render_copies_exactly_the_table_lines(tmp_path):
    (tmp_path / "r.md").write_text("# t\n\ntext\n| a |\n|---|\n| 1 |\nmore\n")
    got = readme.render("<!-- results: r.md -->\nold\n<!-- /results -->\n", tmp_path)
    assert got == "<!-- results: r.md -->\n| a |\n|---|\n| 1 |\n<!-- /results -->\n"
