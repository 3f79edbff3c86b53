"""The README's result blocks, rewritten from the results files they name.

    python -m benchmarks.readme            # rewrite README.md's blocks from benchmarks/results/
    python -m benchmarks.readme --check    # exit 1 when a block differs from its file

A block is ``<!-- results: benchmarks/results/NAME.md -->`` ... ``<!-- /results -->``; it holds
exactly the Markdown table lines of that file (every line starting with ``|``, in order).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.harness import REPO
from lit_dlrm.paths import atomic_write

BLOCK = re.compile(r"(<!-- results: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def tables_of(text: str) -> str:
    """The Markdown table lines of a results file, in order."""
    return "".join(line + "\n" for line in text.splitlines() if line.startswith("|"))


def render(readme: str, root: Path = REPO) -> str:
    """``readme`` with every block's body replaced by its file's tables. FileNotFoundError names
    the block's line when its file is missing; ValueError when a marker is left open."""
    opened = readme.count("<!-- results:")
    if opened != len(BLOCK.findall(readme)) or opened != readme.count("<!-- /results -->"):
        raise ValueError(
            f"README: {opened} '<!-- results: ... -->' markers, "
            f"{readme.count('<!-- /results -->')} '<!-- /results -->': expected matching pairs"
        )

    def fill(m: re.Match) -> str:
        path = root / m["path"]
        if not path.is_file():
            line = readme.count("\n", 0, m.start()) + 1
            raise FileNotFoundError(f"README.md:{line}: results file {m['path']} does not exist")
        return m[1] + tables_of(path.read_text()) + m[4]

    return BLOCK.sub(fill, readme)


def update(path: Path = REPO / "README.md") -> bool:
    """Rewrite the README's blocks in place; True when it changed."""
    old = path.read_text()
    new = render(old, path.parent)
    if new != old:
        atomic_write(path, lambda tmp: tmp.write_text(new))
    return new != old


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether a block differs")
    args = parser.parse_args(argv)
    path = REPO / "README.md"
    if args.check:
        if render(path.read_text()) != path.read_text():
            raise SystemExit("README.md: a results block differs from its file")
        return
    print("README.md " + ("rewritten" if update(path) else "unchanged"))


if __name__ == "__main__":
    main()
