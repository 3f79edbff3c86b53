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
    """``pid`` and all its descendants still running."""
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        pids.append(p)
    return pids


def _rollup_mib(pid: int) -> tuple[float, float]:
    """(Pss, Pss_Anon) of ``/proc/<pid>/smaps_rollup``, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Pss_Anon"):
            fields[name] = int(rest.split()[0]) / 1024  # kB
    return fields["Pss"], fields["Pss_Anon"]


class Peaks(NamedTuple):
    """A process tree's memory (its peaks, where :func:`run_measured` returns it), in MiB."""

    rss_mib: float  # resident memory, the pages of memory-mapped files it read included
    anon_mib: float  # what it allocated (RssAnon): mapped files left out


def tree_memory_mib(pid: int) -> Peaks:
    """Resident memory now of process ``pid`` and its descendants, and its anonymous part. One
    process: its ``VmRSS`` and ``RssAnon``. Several: the sum of their proportional shares
    (``Pss`` and ``Pss_Anon`` of ``smaps_rollup``: a page mapped by n processes counts 1/n in
    each), so the pages forked workers share with their parent count once, not once a process.
    Processes that end while they are read count 0."""
    pids, total = tree_pids(pid), (0.0, 0.0)
    for p in pids:
        try:
            if len(pids) == 1:
                values = _status_mib("VmRSS", p), _status_mib("RssAnon", p)
            else:
                values = _rollup_mib(p)
        except (OSError, KeyError, RuntimeError):
            continue
        total = (total[0] + values[0], total[1] + values[1])
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
    RuntimeError with the command and its stderr's tail when it fails. Sampled every 10 ms, or
    less often while reading the tree's memory takes longer than a millisecond (several large
    processes), so that sampling takes at most a tenth of a core."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    peak, stop = [0.0, 0.0], threading.Event()

    def sample():
        while not stop.is_set():
            start = time.perf_counter()
            now = tree_memory_mib(proc.pid)
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
    return out, err, Peaks(*peak)
