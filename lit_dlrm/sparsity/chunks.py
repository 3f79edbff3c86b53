"""Walking embedding tables: row chunks, torch's thread count, a thread pool over tables, and
handing the memory they freed back to the OS."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch


def row_chunks(n: int, d: int, chunk_elems: int, height: int = 1) -> Iterator[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` covering ``n`` rows of width ``d`` in order: about ``chunk_elems``
    elements each, a multiple of ``height`` rows (at least ``height``; the last may be shorter)."""
    rows = max(1, chunk_elems // max(d, 1))
    rows = max(height, rows - rows % height)
    for r0 in range(0, n, rows):
        yield r0, min(n, r0 + rows)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged), then restore.
    torch's thread count is process-wide."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def release_freed_memory() -> bool:
    """Hand the pages of freed heap memory back to the OS (glibc's ``malloc_trim``); False where
    the C library has none (not glibc). Freed temporaries stay resident around the small
    allocations that outlive them, and each worker thread's arena keeps its own; trimmed, they do
    not add up over a sweep's points."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None
    if trim is None:
        return False
    trim(0)
    return True


def worker_count(workers: int | None = None) -> int:
    """``workers`` if given, else the default for CPU-bound Python threads: up to 2, the CPU count
    (numpy, torch, zlib-ng and zstd release the GIL while they work)."""
    return max(1, workers if workers is not None else min(2, os.cpu_count() or 1))


def map_tables(fn: Callable[[int], object], tables: Sequence[torch.Tensor], workers=None) -> list:
    """``[fn(0), fn(1), ...]``, one call per table: largest tables first, over ``workers`` Python
    threads (None: up to 2, the CPU count), torch single-threaded inside; each call runs with the
    caller's grad and inference modes. The first exception raised by ``fn`` propagates. The
    threads' freed memory is handed back at the end (:func:`release_freed_memory`)."""
    order = sorted(range(len(tables)), key=lambda i: tables[i].numel(), reverse=True)
    workers = worker_count(workers)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(i: int):  # grad and inference modes are thread-local: carry the caller's
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(i)

    with torch_threads(1):
        if workers == 1:
            results = [call(i) for i in order]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(call, order))
            release_freed_memory()
    out: list = [None] * len(tables)
    for i, result in zip(order, results):
        out[i] = result
    return out
