"""Checking directory options early: a path that exists as a file is refused with the option named.

Otherwise the mistake surfaces late and unnamed, e.g. as ``NotADirectoryError`` from the first
write after a whole epoch of training or the first grid point of a sweep.
"""

from __future__ import annotations

import os
from pathlib import Path


def check_directory(option: str, path: str | os.PathLike | None) -> None:
    """Raise ValueError naming `option` when `path`, or the nearest part of it that exists, is not a
    directory. None and paths still to be created are fine."""
    if path is None:
        return
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{option}: {part} exists and is not a directory (got {path})")
            return
