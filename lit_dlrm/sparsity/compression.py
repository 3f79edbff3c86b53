"""Checkpoint size on disk: the reference's torch.save + deflate, and sparse-shuffle-zstd.

``reference_zip_size``: ``torch.save(state_dict)`` wrapped in a ``ZIP_DEFLATED`` archive (the
reference's ``evaluate_disk_savings.py``); bytes, and ``zip_file_size`` floored to MiB as its CSV.
The archive is written in one pass, ``torch.save``'s bytes deflated by zlib-ng at zipfile's default
level (6) as they come, 16 MiB at a time on a thread per core, instead of a ``.pt`` file zipped by
``zipfile``: the same archive to a
fraction of a percent in size with +0.0 zeros (a few percent smaller with the reference's
signed ones), read by ``zipfile``, in less time (``benchmarks/compress.py``).
``zstd_sparse_size`` / ``save_compressed`` / ``load_compressed``: the ``.lds`` format (per tensor
a bitmask of the non-zeros, the signs of any -0.0, the byte-shuffled survivors, each
zstd-compressed); any dtype round-trips bit for bit. Files are written atomically and deleted
after measuring unless ``keep_dir`` is given. Layout and why: ``docs/design.md``.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import struct
import tempfile
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from lit_dlrm.paths import atomic_write, naming_no_space
from lit_dlrm.sparsity.chunks import map_tables, row_chunks, worker_count

MAGIC = b"LDSZ"
VERSION = 2  # 2: survivors shuffled BLOCK at a time (1: the whole tensor at once)
SUFFIX = ".lds"
DEFAULT_LEVEL = (
    1  # zstd level: measured best speed/size trade-off for fp32 tables (benchmarks/compress.py)
)
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class SizeResult:
    """One measured checkpoint: its format, size and timings."""

    format: str  # "torch.save+deflate" or "sparse-shuffle-zstd"
    bytes: int  # size of the file on disk
    write_s: float  # serialise + compress + write
    read_s: float  # read + decompress (zip: into a state_dict; zstd: each tensor, then dropped)
    path: str | None = None  # where it was kept (None when deleted)

    @property
    def zip_file_size(self) -> int:
        """The reference's column: size floored to whole MiB (``bytes >> 20``)."""
        return self.bytes >> 20


# --------------------------------------------------------------------- reference: torch.save + zip


ZIP_LEVEL = 6  # zipfile's default, zlib's Z_DEFAULT_COMPRESSION
_CHUNK = 1 << 24  # bytes deflated at a time: bounds the compressor's output buffer
_WINDOW = 1 << 15  # deflate's window: a chunk's dictionary, the 32 KiB of input before it
_ZIP64 = 0xFFFFFFFF  # a size or offset held in the zip64 extra field instead


def _deflate_chunk(chunk: bytes, dictionary: bytes, level: int, last: bool) -> bytes:
    """Raw deflate of ``chunk``, primed with ``dictionary`` (the input just before it), ending
    byte-aligned (a sync flush) unless ``last``: the outputs of consecutive chunks concatenate
    into one deflate stream, nearly as small as one compressor's (pigz's scheme)."""
    from zlib_ng import zlib_ng

    c = zlib_ng.compressobj(
        level, zlib_ng.DEFLATED, -15, **({"zdict": dictionary} if dictionary else {})
    )
    return c.compress(chunk) + c.flush(zlib_ng.Z_FINISH if last else zlib_ng.Z_SYNC_FLUSH)


class _DeflatingWriter(io.RawIOBase):
    """A writable stream that deflates what it is given into ``out`` (raw deflate, zlib-ng),
    keeping the CRC-32 and size of the bytes written, as a zip member needs them. Its input is
    cut into ``_CHUNK``-byte chunks deflated on ``workers`` threads (:func:`_deflate_chunk`), at
    most ``workers`` + 1 in flight, written in order."""

    def __init__(self, out: BinaryIO, level: int, workers: int | None = None) -> None:
        from zlib_ng import zlib_ng

        self.out, self.crc32, self.level = out, zlib_ng.crc32, level
        self.crc, self.size = 0, 0
        self.pending = bytearray()  # input not yet deflated: less than one chunk
        self.dictionary = b""
        self.workers = worker_count(workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self.in_flight: deque = deque()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.crc = self.crc32(view, self.crc)
        self.size += len(view)
        i = 0
        while i < len(view):
            take = min(_CHUNK - len(self.pending), len(view) - i)
            self.pending += view[i : i + take]
            i += take
            if len(self.pending) == _CHUNK:
                self._submit(last=False)
        return len(view)

    def _submit(self, last: bool) -> None:
        chunk, self.pending = bytes(self.pending), bytearray()
        job = self.pool.submit(_deflate_chunk, chunk, self.dictionary, self.level, last)
        self.in_flight.append(job)
        self.dictionary = chunk[-_WINDOW:]
        while len(self.in_flight) > self.workers:
            self.out.write(self.in_flight.popleft().result())

    def finish(self) -> None:
        """Deflate what is left, ending the stream, and write every chunk's output."""
        self._submit(last=True)
        while self.in_flight:
            self.out.write(self.in_flight.popleft().result())

    def close(self) -> None:
        """Stop the threads (chunks not yet deflated are dropped)."""
        self.pool.shutdown(cancel_futures=True)
        super().close()


def _write_reference_zip(state_dict: dict[str, torch.Tensor], workdir: Path, stem: str) -> Path:
    """A zip archive (zip64, one deflated member ``<stem>.pt`` holding ``torch.save``'s bytes;
    those of a stream, whose records sit under ``archive/`` where a file's take its stem)."""
    zpath, name = workdir / f"{stem}.zip", f"{stem}.pt".encode()
    local = struct.Struct("<IHHHHHIIIHH")  # signature .. extra length (APPNOTE 4.3.7)
    with open(zpath, "wb") as f:
        # sizes and CRC are patched in once known; zip64 keeps them 8 bytes wide
        f.write(local.pack(0x04034B50, 45, 0, 8, 0, 0x21, 0, _ZIP64, _ZIP64, len(name), 20))
        f.write(name + struct.pack("<HHQQ", 1, 16, 0, 0))
        start = f.tell()
        with _DeflatingWriter(f, ZIP_LEVEL) as sink:
            torch.save(state_dict, sink)
            sink.finish()
        packed = f.tell() - start
        central = f.tell()
        fields = (0x02014B50, 3 << 8 | 45, 45, 0, 8, 0, 0x21, sink.crc, _ZIP64, _ZIP64)
        fields += (len(name), 28, 0, 0, 0, 0o600 << 16, _ZIP64)  # made by Unix; mode rw-------
        f.write(struct.pack("<IHHHHHHIIIHHHHHII", *fields))  # central header (APPNOTE 4.3.12)
        f.write(name + struct.pack("<HHQQQ", 1, 24, sink.size, packed, 0))
        end = f.tell()
        f.write(
            struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, end - central, central)
        )
        f.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, _ZIP64, _ZIP64, 0))
        f.seek(14)
        f.write(struct.pack("<I", sink.crc))
        f.seek(local.size + len(name) + 4)
        f.write(struct.pack("<QQ", sink.size, packed))
    return zpath


def _read_reference_zip(zpath: Path, workdir: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(zpath) as zf:
        name = zf.namelist()[0]
        pt = Path(zf.extract(name, path=workdir / "unzipped"))
    try:
        return torch.load(pt, weights_only=True)
    finally:
        pt.unlink()


def reference_zip_size(
    state_dict: dict[str, torch.Tensor],
    workdir: str | os.PathLike,
    keep_dir: str | os.PathLike | None = None,
    stem: str = "model",
    measure_read: bool = True,
) -> SizeResult:
    """torch.save + ZIP_DEFLATED (default level), exactly as the reference; size in bytes. A
    full disk is a NoSpaceError naming ``workdir``."""
    with naming_no_space(workdir), tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        zpath = _write_reference_zip(state_dict, tmp, stem)
        write_s = time.perf_counter() - t0
        size = os.path.getsize(zpath)
        read_s = float("nan")
        if measure_read:
            t0 = time.perf_counter()
            _read_reference_zip(zpath, tmp)
            read_s = time.perf_counter() - t0
        kept = _keep(zpath, keep_dir)
    return SizeResult("torch.save+deflate", size, write_s, read_s, kept)


def _keep(path: Path, keep_dir: str | os.PathLike | None) -> str | None:
    """Move a measured file into keep_dir atomically; None if not kept."""
    if keep_dir is None:
        return None
    final = Path(keep_dir) / path.name
    atomic_write(final, lambda tmp: shutil.move(path, tmp))
    return str(final)


# --------------------------------------------------------------------------- sparse-shuffle-zstd

SECTIONS = ("mask", "signs", "values")
BLOCK = 1 << 20  # elements byte-shuffled together: bounds the encoder's and decoder's buffers
_WIDE = 10**20 - 1  # wider than any count or offset: the header's length is reserved with it


def _header(entries: list[dict]) -> bytes:
    return json.dumps({"block": BLOCK, "tensors": entries}).encode()


def _encode(t: torch.Tensor, level: int) -> tuple[dict, list[list[bytes]]]:
    """One tensor -> (header entry, the compressed parts of its mask, signs and values)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)  # one per call: compressors are not thread-safe
    t = t.detach().cpu().contiguous()
    itemsize = t.element_size()
    raw = t.reshape(-1).view(torch.uint8).numpy()  # (numel * itemsize,) shares memory
    elems = raw.view(_UINT[itemsize])  # (numel,) bit patterns
    sign_only = _UINT[itemsize](1 << (8 * itemsize - 1))  # -0.0 for floats
    neg_zero = elems == sign_only  # (numel,) bool
    n_neg = int(np.count_nonzero(neg_zero))
    keep = elems != 0  # (numel,) bool
    if n_neg:
        keep &= ~neg_zero
    nnz = int(np.count_nonzero(keep))
    mask = [cctx.compress(memoryview(np.packbits(keep)))]
    # which of the zeros are -0.0 (only when there are any): 1 bit per zero
    signs = [cctx.compress(memoryview(np.packbits(neg_zero[~keep])))] if n_neg else []
    del neg_zero
    values: list[bytes] = []
    if nnz:  # the survivors, byte-shuffled BLOCK elements at a time, in one zstd frame
        stream = cctx.compressobj(size=nnz * itemsize)
        for i0, i1 in row_chunks(elems.size, 1, BLOCK):
            block = elems[i0:i1] if nnz == elems.size else np.compress(keep[i0:i1], elems[i0:i1])
            planes = block.view(np.uint8).reshape(-1, itemsize).T.copy()  # (itemsize, n)
            values.append(stream.compress(memoryview(planes)))
        values.append(stream.flush())
    entry = {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "nnz": nnz,
        "neg_zeros": n_neg,
    }
    return entry, [mask, signs, values]


def save_compressed(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    level: int = DEFAULT_LEVEL,
    workers: int | None = None,
) -> int:
    """Write `state_dict` (tensors only) in the sparse-shuffle-zstd format; returns bytes.

    Tensors are encoded ``workers`` at a time (:func:`~lit_dlrm.sparsity.chunks.map_tables`;
    None: its default), each by one thread, and written as each is done: memory holds the
    tensors in flight, not the file. Atomic: written to a temporary file beside `path`, then
    renamed.
    """
    path = Path(path)
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}]: expected a tensor, got {type(t).__name__}")
    names, tensors = list(state_dict), list(state_dict.values())
    widest = {"nnz": _WIDE, "neg_zeros": _WIDE, **{key: [_WIDE, _WIDE] for key in SECTIONS}}
    widest_entries = [
        {"name": n, "dtype": str(t.dtype), "shape": list(t.shape), **widest}
        for n, t in zip(names, tensors)
    ]
    reserved = len(_header(widest_entries))
    start = len(MAGIC) + 12 + reserved  # where the sections begin

    def write(tmp: Path) -> None:
        lock = threading.Lock()
        with open(tmp, "wb") as f:
            f.seek(start)

            def encode(i: int) -> dict:
                entry, sections = _encode(tensors[i], level)
                with lock:  # sections in the order tensors finish; the header says where
                    for key, parts in zip(SECTIONS, sections):
                        offset = f.tell() - start
                        for part in parts:
                            f.write(part)
                        entry[key] = [offset, f.tell() - start - offset]
                return {"name": names[i], **entry}

            header = _header(map_tables(encode, tensors, workers))
            f.seek(0)  # the header, padded with JSON whitespace to the length reserved
            f.write(MAGIC + struct.pack("<IQ", VERSION, reserved) + header.ljust(reserved))

    atomic_write(path, write)
    return os.path.getsize(path)


def is_compressed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts as a sparse-shuffle-zstd (``.lds``) file does (its magic bytes)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _decode(e: dict, data: memoryview, out: torch.Tensor, block: int) -> None:
    """Fill ``out`` (``e``'s dtype and shape) from header entry ``e``; ``data``: the sections;
    ``block``: elements shuffled together (version 1: the whole tensor)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()  # one per call: decompressors are not thread-safe

    def section(key: str) -> memoryview:
        start, length = e[key]
        return data[start : start + length]

    numel, itemsize, nnz = out.numel(), out.element_size(), e["nnz"]
    elems = out.reshape(-1).view(torch.uint8).numpy().view(_UINT[itemsize])  # (numel,)
    keep = None  # (numel,) bool; not needed when every element survives
    if nnz < numel:
        keep = np.unpackbits(np.frombuffer(dctx.decompress(section("mask")), np.uint8), count=numel)
        keep = keep.view(bool)
    if nnz:
        with dctx.stream_reader(section("values")) as stream:
            for i0, i1 in row_chunks(numel, 1, block):
                n = i1 - i0 if keep is None else int(np.count_nonzero(keep[i0:i1]))
                planes = np.empty((itemsize, n), np.uint8)
                view, got = memoryview(planes.reshape(-1)), 0
                while got < planes.size:
                    read = stream.readinto(view[got:])
                    if not read:
                        raise ValueError(f"{e['name']}: values section ends early")
                    got += read
                if keep is None:  # unshuffled straight into place
                    elems[i0:i1].view(np.uint8).reshape(-1, itemsize)[:] = planes.T
                else:
                    elems[i0:i1] = 0
                    elems[i0:i1][keep[i0:i1]] = planes.T.copy().view(_UINT[itemsize]).reshape(-1)
    else:
        elems[:] = 0
    if e["neg_zeros"]:
        neg = np.zeros(numel, dtype=bool)
        signs = np.frombuffer(dctx.decompress(section("signs")), np.uint8)
        neg[~keep] = np.unpackbits(signs, count=numel - nnz).view(bool)
        elems[neg] = _UINT[itemsize](1 << (8 * itemsize - 1))


def _read_compressed(path: str | os.PathLike, workers: int | None, keep: bool) -> dict:
    """The tensors of a sparse-shuffle-zstd file, decoded ``workers`` at a time; with ``keep``
    False each is dropped once decoded (what a read costs, holding only the tensors in flight)."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:4] != MAGIC:
            raise ValueError(f"{path}: not a sparse-shuffle-zstd file (bad magic)")
        version, hlen = struct.unpack("<IQ", head[4:])
        if version not in (1, VERSION):
            raise ValueError(f"{path}: format version {version}, expected 1 or {VERSION}")
        header = json.loads(f.read(hlen))
        entries = header["tensors"]
        shapes = [torch.empty(e["shape"], device="meta") for e in entries]  # sizes, for the order
        out: dict[str, torch.Tensor] = dict.fromkeys(e["name"] for e in entries) if keep else {}

        def decode(i: int) -> None:
            e = entries[i]
            t = torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]))
            _decode(e, data, t, header.get("block") or t.numel())
            if keep:
                out[e["name"]] = t

        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            whole = memoryview(mapped)
            data = whole[16 + hlen :]
            try:
                map_tables(decode, shapes, workers)
            finally:
                data.release()
                whole.release()
    return out


def load_compressed(path: str | os.PathLike, workers: int | None = None) -> dict[str, torch.Tensor]:
    """Read a sparse-shuffle-zstd file back into a state_dict, bit-for-bit; tensors are decoded
    ``workers`` at a time (:func:`~lit_dlrm.sparsity.chunks.map_tables`; None: its default)."""
    return _read_compressed(path, workers, keep=True)


def zstd_sparse_size(
    state_dict: dict[str, torch.Tensor],
    workdir: str | os.PathLike,
    keep_dir: str | os.PathLike | None = None,
    stem: str = "model",
    level: int = DEFAULT_LEVEL,
    measure_read: bool = True,
    workers: int | None = None,
) -> SizeResult:
    """Write the sparse-shuffle-zstd format, measure size and times, delete unless kept. A full
    disk is a NoSpaceError naming ``workdir``. ``workers``: tensors encoded and decoded at once."""
    with naming_no_space(workdir), tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{stem}{SUFFIX}"
        t0 = time.perf_counter()
        size = save_compressed(state_dict, path, level=level, workers=workers)
        write_s = time.perf_counter() - t0
        read_s = float("nan")
        if measure_read:
            t0 = time.perf_counter()
            _read_compressed(path, workers, keep=False)
            read_s = time.perf_counter() - t0
        kept = _keep(path, keep_dir)
    return SizeResult("sparse-shuffle-zstd", size, write_s, read_s, kept)
