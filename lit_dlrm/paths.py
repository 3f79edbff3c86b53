"""File-system helpers: directory options checked before any work (`check_directory`: a mistake
otherwise surfaces late and unnamed), the one atomic file write (`atomic_write`), and a full disk
reported by the name of what was being written (`NoSpaceError`, `naming_no_space`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit
# torch.save's zip writer reports a short write as a RuntimeError without the errno
_TORCH_SHORT_WRITE = ("file write failed", "unexpected pos")


class NoSpaceError(OSError):
    """A write that found no room, naming what was being written; what it wrote is removed."""


@contextlib.contextmanager
def naming_no_space(path: str | os.PathLike) -> Iterator[None]:
    """Inside it, an OSError of a full disk, a quota or a file-size limit becomes a
    :class:`NoSpaceError` naming ``path`` and saying what a rerun does; others pass unchanged.
    The caller removes what it wrote half-way (as :func:`atomic_write` does)."""
    try:
        yield
    except NoSpaceError:
        raise
    except (OSError, RuntimeError) as err:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            code, reason = err.errno, err.strerror
        elif isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_SHORT_WRITE):
            code, reason = errno.ENOSPC, "a write came up short"
        else:
            raise
        raise NoSpaceError(
            code,
            f"{path}: {reason} while writing it (a full disk, a quota or a file-size limit); "
            "nothing half-written is kept under that name: free space and run the command "
            "again, it goes on from what was complete",
        ) from err


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
    """Call ``write(tmp_path)`` then rename the result over ``path`` (same directory, same disk);
    a full disk is a :class:`NoSpaceError` naming ``path``, and the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with naming_no_space(path):
            write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every output private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value) -> None:
    """``value`` as JSON text at ``path``, written by :func:`atomic_write` (whole or not at all)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1)))
