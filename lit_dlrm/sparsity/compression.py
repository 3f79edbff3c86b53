"""Checkpoint size on disk: the reference's torch.save + deflate, and sparse-shuffle-zstd.

``reference_zip_size``: ``torch.save(state_dict)`` wrapped in a ``ZIP_DEFLATED`` archive (the
reference's ``evaluate_disk_savings.py``); bytes, and ``zip_file_size`` floored to MiB as its CSV.
The archive is written in one pass, ``torch.save``'s bytes deflated by zlib-ng at zipfile's default
level (6) as they come, instead of a ``.pt`` file zipped by ``zipfile``: the same archive to a
fraction of a percent in size, read by ``zipfile``, in less time (``benchmarks/compress.py``).
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
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from lit_dlrm.paths import atomic_write, naming_no_space
from lit_dlrm.sparsity.chunks import map_tables

MAGIC = b"LDSZ"
VERSION = 1
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
    read_s: float  # read + decompress + rebuild the state_dict
    path: str | None = None  # where it was kept (None when deleted)

    @property
    def zip_file_size(self) -> int:
        """The reference's column: size floored to whole MiB (``bytes >> 20``)."""
        return self.bytes >> 20


# --------------------------------------------------------------------- reference: torch.save + zip


ZIP_LEVEL = 6  # zipfile's default, zlib's Z_DEFAULT_COMPRESSION
_CHUNK = 1 << 24  # bytes deflated at a time: bounds the compressor's output buffer
_ZIP64 = 0xFFFFFFFF  # a size or offset held in the zip64 extra field instead


class _DeflatingWriter(io.RawIOBase):
    """A writable stream that deflates what it is given into ``out`` (raw deflate, zlib-ng),
    keeping the CRC-32 and size of the bytes written, as a zip member needs them."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        from zlib_ng import zlib_ng

        self.out, self.zlib = out, zlib_ng
        self.compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)  # -15: raw deflate
        self.crc, self.size = 0, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), _CHUNK):
            chunk = view[i : i + _CHUNK]
            self.crc = self.zlib.crc32(chunk, self.crc)
            self.out.write(self.compressor.compress(chunk))
        self.size += len(view)
        return len(view)

    def finish(self) -> None:
        self.out.write(self.compressor.flush())


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
        sink = _DeflatingWriter(f, ZIP_LEVEL)
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


def _encode(t: torch.Tensor, level: int) -> tuple[dict, list[bytes]]:
    """One tensor -> (header entry, [compressed bitmask, compressed signs, compressed values])."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)  # one per call: compressors are not thread-safe
    t = t.detach().cpu().contiguous()
    itemsize = t.element_size()
    raw = t.reshape(-1).view(torch.uint8).numpy()  # (numel * itemsize,) shares memory
    elems = raw.view(_UINT[itemsize])  # (numel,) bit patterns
    sign_only = _UINT[itemsize](1 << (8 * itemsize - 1))  # -0.0 for floats
    neg_zero = elems == sign_only  # (numel,) bool
    keep = elems != 0  # (numel,) bool
    n_neg = int(np.count_nonzero(neg_zero))
    if n_neg:
        keep &= ~neg_zero
    nnz = int(np.count_nonzero(keep))
    values = elems if nnz == elems.size else np.compress(keep, elems)  # (nnz,) survivors
    del elems
    mask_c = cctx.compress(memoryview(np.packbits(keep)))
    # which of the zeros are -0.0 (only when there are any): 1 bit per zero
    signs_c = cctx.compress(memoryview(np.packbits(neg_zero[~keep]))) if n_neg else b""
    del keep, neg_zero
    vals_c = b""
    if nnz:
        planes = values.view(np.uint8).reshape(-1, itemsize).T.copy()  # (itemsize, nnz) shuffled
        del values
        vals_c = cctx.compress(memoryview(planes))
    entry = {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "nnz": nnz,
        "neg_zeros": n_neg,
    }
    return entry, [mask_c, signs_c, vals_c]


def save_compressed(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    level: int = DEFAULT_LEVEL,
    workers: int | None = None,
) -> int:
    """Write `state_dict` (tensors only) in the sparse-shuffle-zstd format; returns bytes.

    Tensors are encoded ``workers`` at a time (:func:`~lit_dlrm.sparsity.chunks.map_tables`;
    None: its default), each by one thread. Atomic: written to a temporary file beside `path`,
    then renamed.
    """
    path = Path(path)
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}]: expected a tensor, got {type(t).__name__}")
    tensors = list(state_dict.values())
    encoded = map_tables(lambda i: _encode(tensors[i], level), tensors, workers)
    entries, blobs = [], []
    offset = 0
    for name, (entry, sections) in zip(state_dict, encoded):
        entry["name"] = name
        for key, blob in zip(("mask", "signs", "values"), sections):
            entry[key] = [offset, len(blob)]
            offset += len(blob)
        entries.append(entry)
        blobs += sections
    header = json.dumps({"tensors": entries}).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<IQ", VERSION, len(header)) + header)
            for b in blobs:
                f.write(b)

    atomic_write(path, write)
    return os.path.getsize(path)


def is_compressed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts as a sparse-shuffle-zstd (``.lds``) file does (its magic bytes)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _decode(e: dict, data: memoryview, out: torch.Tensor) -> None:
    """Fill ``out`` (``e``'s dtype and shape) from header entry ``e``; ``data``: the sections."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()  # one per call: decompressors are not thread-safe

    def section(key: str) -> np.ndarray:
        start, length = e[key]
        return np.frombuffer(dctx.decompress(data[start : start + length]), dtype=np.uint8)

    numel, itemsize = out.numel(), out.element_size()
    elems = out.reshape(-1).view(torch.uint8).numpy().view(_UINT[itemsize])  # (numel,)
    keep = np.unpackbits(section("mask"), count=numel).view(bool)  # (numel,)
    if e["nnz"] == 0:
        elems[:] = 0
    elif e["nnz"] == numel:  # unshuffled straight into place
        elems.view(np.uint8).reshape(numel, itemsize)[:] = section("values").reshape(itemsize, -1).T
    else:
        elems[:] = 0
        planes = section("values").reshape(itemsize, -1)  # (itemsize, nnz)
        elems[keep] = planes.T.copy().view(_UINT[itemsize]).reshape(-1)
    if e["neg_zeros"]:
        is_zero = ~keep  # (numel,) bool; no int64 positions of table size
        neg = np.zeros(numel, dtype=bool)
        neg[is_zero] = np.unpackbits(section("signs"), count=numel - e["nnz"]).view(bool)
        del is_zero
        elems[neg] = _UINT[itemsize](1 << (8 * itemsize - 1))


def load_compressed(path: str | os.PathLike, workers: int | None = None) -> dict[str, torch.Tensor]:
    """Read a sparse-shuffle-zstd file back into a state_dict, bit-for-bit; tensors are decoded
    ``workers`` at a time (:func:`~lit_dlrm.sparsity.chunks.map_tables`; None: its default)."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:4] != MAGIC:
            raise ValueError(f"{path}: not a sparse-shuffle-zstd file (bad magic)")
        version, hlen = struct.unpack("<IQ", head[4:])
        if version != VERSION:
            raise ValueError(f"{path}: format version {version}, expected {VERSION}")
        header = json.loads(f.read(hlen))
        entries = header["tensors"]
        out = [torch.empty(e["shape"], dtype=getattr(torch, e["dtype"])) for e in entries]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            whole = memoryview(mapped)
            data = whole[16 + hlen :]
            try:
                map_tables(lambda i: _decode(entries[i], data, out[i]), out, workers)
            finally:
                data.release()
                whole.release()
    return {e["name"]: t for e, t in zip(entries, out)}


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
            load_compressed(path, workers=workers)
            read_s = time.perf_counter() - t0
        kept = _keep(path, keep_dir)
    return SizeResult("sparse-shuffle-zstd", size, write_s, read_s, kept)
