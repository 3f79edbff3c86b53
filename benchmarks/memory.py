"""Memory of the current process or a process tree (Linux ``/proc``), for the benchmarks."""

import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

from lit_dlrm.sparsity.chunks import release_freed_memory


def _status_mib(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status: memory is measured on Linux only")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants still running, ``pid`` first."""
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:  # ended
            continue
        for task in tasks:
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):  # the thread ended
                continue
    return pids


def _private_mib(pid: int) -> tuple[float, float]:
    """(Private_Clean + Private_Dirty, Private_Dirty) of ``/proc/<pid>/smaps_rollup`` in MiB: the
    pages the process maps that no other process does; zeros for one without memory (ended)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty"):
            fields[name] = int(rest.split()[0]) / 1024  # kB
    if text and len(fields) != 2:
        raise RuntimeError(
            f"no Private_Clean and Private_Dirty in /proc/{pid}/smaps_rollup: a process tree's "
            "memory is measured on Linux >= 4.14 only"
        )
    clean, dirty = fields.get("Private_Clean", 0.0), fields.get("Private_Dirty", 0.0)
    return clean + dirty, dirty


class Peaks(NamedTuple):
    """A process tree's memory (:func:`tree_memory_mib`; its peaks, where :func:`run_measured`
    returns it), in MiB."""

    rss_mib: float  # resident memory, the pages of memory-mapped files it read included
    anon_mib: float  # what it allocated: mapped files left out


def tree_memory_mib(pid: int) -> Peaks:
    """Resident memory now of process ``pid`` and its descendants, and its anonymous part: the
    root's ``VmRSS`` and ``RssAnon``, plus each descendant's private pages (``smaps_rollup``:
    ``Private_Clean + Private_Dirty``, and ``Private_Dirty`` for the anonymous part). A page a
    worker shares with the root (the tables a forked worker inherits, the libraries) counts
    once, in the root, not once a process; pages shared only between descendants are left out.
    Processes that end while they are read count 0. Raises RuntimeError where the kernel does not
    give these fields."""
    root, *descendants = tree_pids(pid)
    try:
        total = [_status_mib("VmRSS", root), _status_mib("RssAnon", root)]
    except (OSError, RuntimeError):  # ended (a zombie's status has no VmRSS)
        return Peaks(0.0, 0.0)
    for p in descendants:
        try:
            rss, anon = _private_mib(p)
        except OSError:  # ended
            continue
        total = [total[0] + rss, total[1] + anon]
    return Peaks(*total)


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``). Not ``ru_maxrss``: on Linux that survives fork and
    exec, so a child of a large parent reports the parent's peak instead of its own."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's resident memory now (``VmRSS``)."""
    return _status_mib("VmRSS")


def reset_peak() -> bool:
    """Release the heap's free pages (:func:`release_freed_memory`), then reset the peak RSS to the
    current RSS (Linux >= 4.0). False where either is not possible: a peak measured from here
    would miss memory reused from the heap."""
    if not release_freed_memory():
        return False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_measured(
    cmd: list[str],
    cwd: Path,
    env: dict | None = None,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
) -> tuple[bytes | None, bytes | None, Peaks]:
    """(stdout, stderr, the process tree's memory peaks (:func:`tree_memory_mib`)) of ``cmd``
    run in ``cwd`` (``stdout`` / ``stderr``: a pipe, or a file for long runs); raises
    RuntimeError with the command and its stderr's tail when it fails, or with why its memory
    could not be read. Sampled every 10 ms, or less often while reading the tree's memory takes
    longer than a millisecond (large descendants), so that sampling takes at most a tenth of a
    core."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    peak, stop, failed = [0.0, 0.0], threading.Event(), []

    def sample():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                now = tree_memory_mib(proc.pid)
            except RuntimeError as err:
                failed.append(err)
                return
            peak[:] = max(peak[0], now.rss_mib), max(peak[1], now.anon_mib)
            stop.wait(max(0.01, 10 * (time.perf_counter() - start)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        tail = err.decode()[-2000:] if err else "(stderr: see its file)"
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{tail}")
    if failed:
        raise failed[0]
    return out, err, Peaks(*peak)
