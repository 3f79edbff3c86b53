"""Memory of the current process or a process tree (Linux ``/proc``), for the benchmarks."""

import shlex
import subprocess
import threading
from pathlib import Path
from typing import NamedTuple

from lit_dlrm.sparsity.chunks import release_freed_memory


def _status_mib(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status: memory is measured on Linux only")


def tree_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now of process ``pid`` and all its descendants (``field`` of their
    ``/proc`` status: ``VmRSS``, or ``RssAnon`` for what they allocated, the pages of mapped files
    left out); processes that end while they are read count 0."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += _status_mib(field, p)
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, RuntimeError):
            continue
    return total


class Peaks(NamedTuple):
    """Peaks of a process tree's memory, in MiB."""

    rss_mib: float  # resident memory, the pages of memory-mapped files it read included
    anon_mib: float  # what it allocated (RssAnon): mapped files left out


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
    """(stdout, stderr, the process tree's memory peaks, sampled every 10 ms) of ``cmd`` run in
    ``cwd`` (``stdout`` / ``stderr``: a pipe, or a file for long runs); raises RuntimeError
    with the command and its stderr's tail when it fails."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    peak, stop = [0.0, 0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))
            peak[1] = max(peak[1], tree_rss_mib(proc.pid, "RssAnon"))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        tail = err.decode()[-2000:] if err else "(stderr: see its file)"
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return out, err, Peaks(*peak)
