"""File-system helpers: directory options checked before any work (`check_directory`: a mistake
otherwise surfaces late and unnamed), and the one atomic file write (`atomic_write`)."""

from __future__ import annotations

import os
import tempfile
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


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the result over ``path`` (same directory, same disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every output private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
