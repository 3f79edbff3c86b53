"""Memory of the current process (Linux ``/proc``), for benchmarks that run each side alone."""

from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status: memory is measured on Linux only")


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``). Not ``ru_maxrss``: on Linux that survives fork and
    exec, so a child of a large parent reports the parent's peak instead of its own."""
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's resident memory now (``VmRSS``)."""
    return _status_mib("VmRSS")


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
