"""Reading Criteo text files: Kaggle `train.txt` / `test.txt`, gzip copies, CSV copies (header)

A line is `[Id,] [label,] I1..I13, C1..C26`, separated by TAB (or `,` for CSV). Trailing empty
fields may be stripped (after C1), lines may end in CRLF or lack the final newline; integers may
be negative, any field empty (missing). Parsing is vectorised over byte blocks (no per-line Python
on the happy path); `explain_line` says what is wrong with a bad line.

Bad input raises `CriteoFormatError` ("train.txt:1234: expected 40 tab-separated fields, got 41"),
or, with `on_bad_line="skip"`, the line is dropped and counted in `ParseStats`.

Output per block (`ParsedBlock`), n rows:
    label: uint8 (n,) or None for unlabelled files
    dense: int32 (n, 13) raw integers, missing -> 0, negatives kept (clipping is preprocessing's)
    cat:   uint32 (n, 26) raw 32-bit hashes, missing -> 0 (as facebookresearch/dlrm does)
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .kaggle import NUM_DENSE, NUM_SPARSE

__all__ = [
    "CriteoFormatError",
    "TextFormat",
    "ParsedBlock",
    "ParseStats",
    "sniff_format",
    "iter_blocks",
    "read_file",
    "explain_line",
    "write_kaggle_tsv",
    "MISSING_DENSE",
]

# "missing" in raw dense arrays handed to `write_kaggle_tsv` (written as an empty field)
MISSING_DENSE = np.iinfo(np.int32).min
_INT32_MAX = np.iinfo(np.int32).max
_DEFAULT_BLOCK_BYTES = 8 << 20


class CriteoFormatError(ValueError):
    """Malformed Criteo input; the message starts with `file:line:` where a line is to blame."""


@dataclass(frozen=True)
class TextFormat:
    """How a Criteo text file is laid out (found by `sniff_format`)."""

    sep: bytes  # b"\t" or b","
    header: bool  # first line is a header (CSV copies)
    has_id: bool  # leading Id column (Kaggle CSV copies)
    has_label: bool  # label column present (train) or not (test)
    gzip: bool

    @property
    def n_prefix(self) -> int:
        return int(self.has_id) + int(self.has_label)

    @property
    def n_fields(self) -> int:
        return self.n_prefix + NUM_DENSE + NUM_SPARSE

    @property
    def min_fields(self) -> int:
        # Trailing empty fields may be stripped, but only among the categoricals: a line must keep
        # its prefix, the 13 dense fields and C1. A shorter line is an error, not silent zeros.
        return self.n_prefix + NUM_DENSE + 1

    def describe_count(self) -> str:
        kind = "tab-separated" if self.sep == b"\t" else "comma-separated"
        return f"{self.n_fields} {kind} fields"


@dataclass
class ParsedBlock:
    label: np.ndarray | None  # uint8 (n,)
    dense: np.ndarray  # int32 (n, 13)
    cat: np.ndarray  # uint32 (n, 26)
    first_line: int  # 1-based line number of the block's first line in the file
    extras: dict = field(default_factory=dict)  # further per-row arrays (synthetic: "prob")

    def __len__(self) -> int:
        return len(self.dense)


@dataclass
class ParseStats:
    lines: int = 0  # data lines seen (header excluded)
    rows: int = 0  # rows kept
    skipped: int = 0  # bad lines dropped (on_bad_line="skip")
    examples: list[str] = field(default_factory=list)  # the first few skipped-line messages


# ----------------------------------------------------------------------------------------------
# opening and sniffing


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_binary(path: str | os.PathLike) -> tuple[BinaryIO, BinaryIO]:
    """(decoded stream, raw file) for `path`; gzip recognised by its magic bytes, not the name."""
    path = Path(path)
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    raw.seek(0)
    return raw, raw


# What a damaged stream raises on read: truncated gzip (EOFError), bad header or CRC (BadGzipFile,
# an OSError), invalid deflate data (zlib.error).
_UNREADABLE = (OSError, EOFError, zlib.error)


def _read(stream: BinaryIO, size: int) -> tuple[bytes, Exception | None]:
    """Up to `size` bytes, and the error that stopped a damaged stream early (None when it did not).

    Read in `read1` pieces: a plain `read(size)` drops the piece it was reading when the error
    comes, so the lines just before the damage would never be looked at.
    """
    parts, got = [], 0
    try:
        while got < size:
            part = stream.read1(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    except _UNREADABLE as e:
        return b"".join(parts), e
    return b"".join(parts), None


def _header_names(has_id: bool, has_label: bool) -> list[str]:
    names = (["id"] if has_id else []) + (["label"] if has_label else [])
    return names + [n.lower() for n in _feature_names()]


def _feature_names() -> list[str]:
    return [f"I{i}" for i in range(1, NUM_DENSE + 1)] + [f"C{i}" for i in range(1, NUM_SPARSE + 1)]


def sniff_format(path: str | os.PathLike, has_label: bool | None = None) -> TextFormat:
    """Look at the first lines of `path` to find separator, header, Id and label columns.

    Without a header, each of the first 1000 lines votes: exactly 40 fields fits only a labelled
    file (Kaggle train), a first field other than 0 or 1 only an unlabelled one (Kaggle test, whose
    I1 is often empty or > 1). The file is labelled unless the unlabelled votes win, so a few
    malformed lines cannot flip the layout of the rest. Pass `has_label` to override.
    """
    path = Path(path)
    name = path.name
    if path.stat().st_size == 0:
        raise CriteoFormatError(f"{name}: empty file")
    stream, raw = open_binary(path)
    try:
        sample, damage = _read(stream, 1 << 20)
    finally:
        raw.close()
    is_gz = _is_gzip(path)
    if not sample.strip(b"\r\n\t, "):
        if damage is not None:  # nothing readable; damage later on is reported by `iter_blocks`
            raise CriteoFormatError(f"{name}:1: cannot decompress: {damage}") from damage
        raise CriteoFormatError(f"{name}: empty file (no data lines)")
    lines = sample.split(b"\n")
    if len(lines) > 1 and (len(sample) == 1 << 20 or damage is not None):
        lines = lines[:-1]  # the last one may be cut
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines[:1000]]
    first = lines[0]
    suffixes = [s.lower() for s in path.suffixes]
    if b"\t" in first:
        sep = b"\t"
    elif ".csv" in suffixes or b"," in first:
        sep = b","
    else:
        sep = b"\t"
    head0 = first.split(sep)[0].strip().lower()
    header = bool(head0) and not head0.lstrip(b"-").isdigit() and head0.isalpha()
    if header:
        try:
            cols = [c.strip().lower() for c in first.decode("ascii").split(sep.decode())]
        except UnicodeDecodeError:
            raise CriteoFormatError(f"{name}:1: header is not ASCII text") from None
        has_id = bool(cols) and cols[0] == "id"
        has_lab = len(cols) > int(has_id) and cols[int(has_id)] == "label"
        if cols != _header_names(has_id, has_lab):
            raise CriteoFormatError(
                f"{name}:1: unrecognised header; expected [Id,][Label,]I1..I13,C1..C26, got "
                f"{','.join(cols[:4])}... ({len(cols)} columns)"
            )
        if has_label is not None and has_label != has_lab:
            raise CriteoFormatError(
                f"{name}:1: header says label={has_lab}, option has_label={has_label}"
            )
        return TextFormat(sep=sep, header=True, has_id=has_id, has_label=has_lab, gzip=is_gz)
    if has_label is None:
        data_lines = [ln for ln in lines[:1000] if ln]
        labelled_only = sum(ln.count(sep) == NUM_DENSE + NUM_SPARSE for ln in data_lines)
        unlabelled_only = sum(ln.split(sep, 1)[0] not in (b"0", b"1") for ln in data_lines)
        has_label = labelled_only >= unlabelled_only
    return TextFormat(sep=sep, header=False, has_id=False, has_label=bool(has_label), gzip=is_gz)


# ----------------------------------------------------------------------------------------------
# vectorised field decoding

_M8 = np.uint64(0x00FF00FF00FF00FF)
_M16 = np.uint64(0x0000FFFF0000FFFF)
_M32 = np.uint64(0x00000000FFFFFFFF)
_HIGHBITS = np.uint64(0x8080808080808080)

# A field of length L (<= 8) read as a little-endian word w has its chars in the low L bytes.
# Left-align them into the high bytes and fill the low bytes with '0': w << SHIFT[L] | FILL[L].
_SHIFT = np.array([0] + [8 * (8 - k) for k in range(1, 9)], dtype=np.uint64)
_FILL = np.array(
    [0x3030303030303030] + [(0x3030303030303030 & ((1 << (8 * (8 - k))) - 1)) for k in range(1, 9)],
    dtype=np.uint64,
)
_KEEP = np.array(
    [0] + [((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(1, 9)], dtype=np.uint64
)
# KEEP[0] == 0 makes an empty field all fill (a shift by 64 bits is not defined).

_ONES = np.uint64(0x0101010101010101)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_ASCII_ZEROS = np.uint64(0x3030303030303030)
_CASE_BIT = np.uint64(0x2020202020202020)


def _words(words: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """8 bytes of each field, left-padded with '0' to 8 chars (first char in the lowest byte).

    start, length: int64 arrays of any shape (lengths 0..8); returns uint64 of the same shape.
    Shifts stay below 64 bits (a 64-bit shift is undefined); empty fields become all '0'.
    """
    w = words[start]  # unaligned 8-byte reads at every field start
    short = np.nonzero(length != 8)  # full 8-char fields (all Kaggle hashes) need nothing more
    if len(short[0]):
        lp = np.maximum(length[short], 1).astype(np.uint64) << np.uint64(3)  # 8 * L, L >= 1
        ws = w[short] << (np.uint64(64) - lp)  # the L chars into the high bytes
        ws |= (_ASCII_ZEROS >> np.uint64(4)) >> (lp - np.uint64(4))  # '0' in the low 8 - L bytes
        ws[length[short] == 0] = _ASCII_ZEROS
        w[short] = ws
    return w


def _hex_digits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SWAR: digit value per byte and a bad mask, for 8 chars of [0-9a-fA-F] packed in uint64.

    Lower-case, decode each byte as (c & 0xF) + 9 * (c >> 6 & 1), then encode the digit back; the
    word is valid iff every digit is < 16 and the re-encoding equals the lower-cased input.
    """
    c = w | _CASE_BIT
    d = c >> np.uint64(6)
    d &= _ONES
    d *= np.uint64(9)
    d += c & _LOW_NIBBLES
    t = d + np.uint64(0x7070707070707070)  # high bit set in a byte iff its digit >= 16
    t &= _HIGHBITS
    bad = t != 0
    t = d + np.uint64(0x7676767676767676)  # high bit set iff digit >= 10 (a letter)
    t >>= np.uint64(7)
    t &= _ONES
    t *= np.uint64(0x27)
    t += d
    t += _ASCII_ZEROS
    bad |= t != c
    return d, bad


def _dec_digits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SWAR: digit value per byte and a bad mask, for 8 chars of [0-9] packed in uint64."""
    bad = (w & _HIGH_NIBBLES) != _ASCII_ZEROS
    t = w + np.uint64(0x0606060606060606)  # a byte above '9' carries into its high nibble
    t &= _HIGH_NIBBLES
    bad |= t != _ASCII_ZEROS
    w &= _LOW_NIBBLES
    return w, bad


def _pack_hex(d: np.ndarray) -> np.ndarray:
    d = ((d & _M8) << np.uint64(4)) | ((d >> np.uint64(8)) & _M8)
    d = ((d & _M16) << np.uint64(8)) | ((d >> np.uint64(16)) & _M16)
    return ((d & _M32) << np.uint64(16)) | (d >> np.uint64(32))


def _pack_dec(d: np.ndarray) -> np.ndarray:
    d = (d & _M8) * np.uint64(10) + ((d >> np.uint64(8)) & _M8)
    d = (d & _M16) * np.uint64(100) + ((d >> np.uint64(16)) & _M16)
    return (d & _M32) * np.uint64(10000) + (d >> np.uint64(32))


def _parse_hex(words, start, length) -> tuple[np.ndarray, np.ndarray]:
    """uint32 values and a bad mask for hex fields (1..8 digits; empty -> 0); any shape."""
    d, bad = _hex_digits(_words(words, start, np.minimum(length, 8)))
    bad |= length > 8
    return _pack_hex(d).astype(np.uint32), bad


def _parse_dec(buf: np.ndarray, words, start, length) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and a bad mask for optionally negative decimals (empty -> 0); any shape."""
    neg = buf[start] == 45  # '-'
    neg &= length > 0
    s = start + neg
    n = length - neg
    bad = neg & (n == 0)
    d, b1 = _dec_digits(_words(words, s, np.minimum(n, 8)))
    val = _pack_dec(d).astype(np.int64)
    bad |= b1
    long_ = np.nonzero(n > 8)
    if len(long_[0]):  # 9..16 digits: high part, then the last 8 digits
        nl, sl = n[long_], s[long_]
        dh, bh = _dec_digits(_words(words, sl, np.minimum(nl - 8, 8)))
        dl, bl = _dec_digits(_words(words, sl + nl - 8, np.full_like(nl, 8)))
        val[long_] = _pack_dec(dh).astype(np.int64) * 10**8 + _pack_dec(dl).astype(np.int64)
        bad[long_] |= bh | bl | (nl > 16)
    np.negative(val, out=val, where=neg)
    return val, bad


# ----------------------------------------------------------------------------------------------
# one block of whole lines


def _parse_block(buf: bytes, fmt: TextFormat) -> tuple[ParsedBlock, np.ndarray]:
    """Parse `buf` (whole lines, each ending in b"\n", CRLF already turned into LF).

    Returns the block (bad lines dropped) and the 0-based indices of bad lines within `buf`.
    """
    n = len(buf)
    padded = buf + bytes(16)  # room for 8-byte reads at the last field
    a = np.frombuffer(padded, dtype=np.uint8)
    words = np.ndarray(shape=(n + 8,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    ab = a[:n]
    is_nl = ab == 10
    is_bound = ab == fmt.sep[0]
    is_bound |= is_nl
    bounds = np.flatnonzero(is_bound)  # every field ends at one of these
    nl_at = np.flatnonzero(is_nl[bounds])  # index into bounds of each line end
    n_lines = len(nl_at)
    bad = np.zeros(n_lines, dtype=bool)

    # Bytes that never belong in a text line: controls other than TAB/LF, and >= 0x7f. Cheap test
    # first (TABs and LFs are the only bytes < 32 of a clean file), the byte-exact one if it fails.
    tabs_and_lfs = len(bounds) if fmt.sep == b"\t" else n_lines + int(np.count_nonzero(ab == 9))
    if n and (ab.max() >= 127 or np.count_nonzero(ab < 32) != tabs_and_lfs):
        ctrl = ab < 32
        ctrl &= ab != 9
        ctrl &= ~is_nl
        ctrl |= ab >= 127
        nl = bounds[nl_at]
        bad[np.searchsorted(nl, np.flatnonzero(ctrl))] = True

    fs = np.empty(len(bounds), dtype=np.int64)  # field starts
    fs[0] = 0
    np.add(bounds[:-1], 1, out=fs[1:])
    flen = bounds - fs  # field lengths
    full = fmt.n_fields
    if n_lines * full == len(bounds) and (np.diff(nl_at) == full).all():
        S = fs.reshape(n_lines, full)
        L = flen.reshape(n_lines, full)
    else:
        n_f = np.diff(nl_at, prepend=-1)  # fields per line
        ok_count = (n_f >= fmt.min_fields) & (n_f <= full)
        bad |= ~ok_count
        line_of = np.repeat(np.arange(n_lines), n_f)
        col = np.arange(len(bounds)) - np.repeat(nl_at - n_f + 1, n_f)
        keep = ok_count[line_of]
        S = np.zeros((n_lines, full), dtype=np.int64)
        L = np.zeros((n_lines, full), dtype=np.int64)  # missing trailing fields: empty
        S[line_of[keep], col[keep]] = fs[keep]
        L[line_of[keep], col[keep]] = flen[keep]

    p = 0
    if fmt.has_id:
        _, b = _parse_dec(a, words, S[:, 0], L[:, 0])
        bad |= b | (L[:, 0] == 0) | (a[S[:, 0]] == 45)  # 1-16 digits, no minus sign
        p += 1
    label = None
    if fmt.has_label:
        ch = a[S[:, p]]
        bad |= (L[:, p] != 1) | ((ch != 48) & (ch != 49))
        label = ch - 48  # uint8
        p += 1
    dval, dbad = _parse_dec(a, words, S[:, p : p + NUM_DENSE], L[:, p : p + NUM_DENSE])  # (n, 13)
    dbad |= np.abs(dval) > _INT32_MAX
    bad |= dbad.any(axis=1)
    p += NUM_DENSE
    cat, cbad = _parse_hex(words, S[:, p:], L[:, p:])  # (n, 26)
    bad |= cbad.any(axis=1)

    dense = dval.astype(np.int32)
    bad_idx = np.flatnonzero(bad)
    if len(bad_idx):
        good = ~bad
        dense, cat = dense[good], cat[good]
        label = label[good] if label is not None else None
    return ParsedBlock(label=label, dense=dense, cat=cat, first_line=0), bad_idx


# ----------------------------------------------------------------------------------------------
# explaining one bad line (plain Python, only on the error path)


def explain_line(line: bytes, fmt: TextFormat) -> str:
    """What is wrong with `line` (without its line end): a message without `file:line:`."""
    for i, byte in enumerate(line):
        if (byte < 32 and byte not in (9, 13)) or byte >= 127:
            return (
                f"binary data, not text (byte 0x{byte:02x} at column {i + 1}); "
                "is this the right file?"
            )
        if byte == 13:
            return f"stray carriage return (byte 0x0d at column {i + 1})"
    text = line.decode("ascii")
    fields = text.split(fmt.sep.decode())
    if not line:
        return f"empty line; expected {fmt.describe_count()}"
    if not fmt.min_fields <= len(fields) <= fmt.n_fields:
        return f"expected {fmt.describe_count()}, got {len(fields)}"
    fields += [""] * (fmt.n_fields - len(fields))
    names = (["Id"] if fmt.has_id else []) + (["label"] if fmt.has_label else []) + _feature_names()
    for name, value in zip(names, fields):
        shown = repr(value if len(value) <= 40 else value[:40] + "...")
        if name == "Id":
            if not value.isdigit() or len(value) > 16:
                return f"Id: expected a non-negative integer of at most 16 digits, got {shown}"
        elif name == "label":
            if value not in ("0", "1"):
                return f"label: expected 0 or 1, got {shown}"
        elif name.startswith("I"):
            body = value[1:] if value.startswith("-") else value
            if value and not (body.isdigit() and body.isascii()):
                return f"{name}: expected an integer, got {shown}"
            if len(body) > 16:  # the vectorised decoder reads at most 16 digits, leading zeros too
                return f"{name}: expected an integer of at most 16 digits, got {shown}"
            if value and abs(int(value)) > _INT32_MAX:
                return f"{name}: integer out of int32 range: {shown}"
        else:
            if len(value) > 8 or any(ch not in "0123456789abcdefABCDEF" for ch in value):
                return f"{name}: expected up to 8 hex digits, got {shown}"
    return "malformed line"  # not reached when the vectorised checks and this function agree


# ----------------------------------------------------------------------------------------------
# streaming over a file


def iter_blocks(
    path: str | os.PathLike,
    *,
    fmt: TextFormat | None = None,
    has_label: bool | None = None,
    on_bad_line: str = "error",
    stats: ParseStats | None = None,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    progress=None,
    threads: int | None = None,
) -> Iterator[ParsedBlock]:
    """Yield `ParsedBlock`s of whole lines, reading `block_bytes` of (decompressed) text at a time.

    Memory stays bounded by the block size. `progress(bytes_read_of_the_raw_file, rows)` is called
    after every block when given. Bad lines raise `CriteoFormatError` naming file and line, or
    with `on_bad_line="skip"` are dropped and counted in `stats`. Blocks are parsed by `threads`
    threads (default: up to 2; numpy releases the GIL) and yielded in file order.
    """
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    path = Path(path)
    name = path.name
    fmt = fmt or sniff_format(path, has_label=has_label)
    stats = stats if stats is not None else ParseStats()
    threads = max(1, threads if threads is not None else min(2, os.cpu_count() or 1))
    stream, raw = open_binary(path)
    pending: deque = deque()  # (body, first line number, future) in file order
    unreadable: list[CriteoFormatError] = []

    def bodies():  # an unreadable rest of the file is reported after the lines before it
        try:
            yield from _bodies(stream, name, fmt, block_bytes)
        except CriteoFormatError as e:
            unreadable.append(e)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for body, first in bodies():
                pending.append((body, first, pool.submit(_parse_block, body, fmt)))
                while len(pending) > threads:  # bounded: at most `threads` + 1 blocks in flight
                    yield from _finish(
                        pending.popleft(), name, fmt, on_bad_line, stats, progress, raw
                    )
            while pending:
                yield from _finish(pending.popleft(), name, fmt, on_bad_line, stats, progress, raw)
    finally:
        raw.close()
    if unreadable:
        raise unreadable[0]
    if stats.lines == 0:
        raise CriteoFormatError(f"{name}: empty file (no data lines)")


def _bodies(stream, name: str, fmt: TextFormat, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(whole lines ending in LF, number of the first line) read `block_bytes` at a time."""
    line_no = 1
    if fmt.header:
        try:
            stream.readline()
        except _UNREADABLE as e:
            raise CriteoFormatError(f"{name}:1: cannot decompress: {e}") from e
        line_no = 2
    rest = b""
    while True:
        chunk, damage = _read(stream, block_bytes)
        data = rest + chunk
        if damage is not None:  # the whole lines before the damage first, then where it stops
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut].replace(b"\r\n", b"\n"), line_no
                line_no += data.count(b"\n", 0, cut)
            raise CriteoFormatError(f"{name}:{line_no}: cannot decompress: {damage}") from damage
        if not chunk:
            if data:
                yield (
                    (data if data.endswith(b"\n") else data + b"\n").replace(b"\r\n", b"\n"),
                    line_no,
                )
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) > 64 * block_bytes:
                raise CriteoFormatError(
                    f"{name}:{line_no}: no line end in {len(data)} bytes; "
                    "binary data or not a Criteo text file?"
                )
            rest = data
            continue
        body, rest = data[:cut], data[cut:]
        n_lines = body.count(b"\n")
        if b"\r" in body:
            body = body.replace(b"\r\n", b"\n")
        yield body, line_no
        line_no += n_lines


def _finish(item, name, fmt, on_bad_line, stats, progress, raw) -> Iterator[ParsedBlock]:
    """Collect one parsed block: raise for (or count) its bad lines, update stats and progress."""
    body, line_no, future = item
    block, bad_idx = future.result()
    n_lines = len(block) + len(bad_idx)
    if len(bad_idx):
        starts = np.r_[0, np.flatnonzero(np.frombuffer(body, np.uint8) == 10)[:-1] + 1]
        for i in bad_idx.tolist():
            if on_bad_line == "skip" and len(stats.examples) >= 5:
                break
            end = body.index(b"\n", starts[i])
            msg = f"{name}:{line_no + i}: {explain_line(body[starts[i] : end], fmt)}"
            if on_bad_line == "error":
                raise CriteoFormatError(msg)
            stats.examples.append(msg)
        stats.skipped += len(bad_idx)
    block.first_line = line_no
    stats.lines += n_lines
    stats.rows += len(block)
    if progress is not None:
        progress(raw.tell(), stats.rows)
    if len(block):
        yield block


def read_file(path, **kwargs) -> tuple[ParsedBlock, ParseStats]:
    """Parse a whole (small) file into one block; for tests and small samples."""
    stats = kwargs.pop("stats", None) or ParseStats()
    blocks = list(iter_blocks(path, stats=stats, **kwargs))
    has_label = blocks[0].label is not None if blocks else False
    label = np.concatenate([b.label for b in blocks]) if has_label else None
    dense = (
        np.concatenate([b.dense for b in blocks]) if blocks else np.zeros((0, NUM_DENSE), np.int32)
    )
    cat = (
        np.concatenate([b.cat for b in blocks]) if blocks else np.zeros((0, NUM_SPARSE), np.uint32)
    )
    return ParsedBlock(label=label, dense=dense, cat=cat, first_line=1), stats


# ----------------------------------------------------------------------------------------------
# writing Kaggle train.txt (vectorised; used by the synthetic generator and the benchmark)

_DENSE_W = 11  # '-' and up to 10 digits


def _format_rows(label: np.ndarray | None, dense: np.ndarray, cat: np.ndarray) -> bytes:
    """Kaggle TSV bytes for n rows. dense: int (n, 13), MISSING_DENSE -> empty;
    cat: uint32 (n, 26), 0 -> empty."""
    n = len(dense)
    pad = 0xFF  # marks unused byte slots; removed at the end
    parts = []
    if label is not None:
        lab = np.full((n, 2), 9, dtype=np.uint8)
        lab[:, 0] = 48 + np.asarray(label, dtype=np.uint8)
        parts.append(lab)
    d = np.asarray(dense, dtype=np.int64)
    missing = d == MISSING_DENSE
    neg = d < 0
    mag = np.where(missing, 0, np.abs(d))
    digits = np.empty((n, NUM_DENSE, _DENSE_W), dtype=np.uint8)
    rem = mag.copy()
    for k in range(_DENSE_W - 1, -1, -1):
        digits[:, :, k] = 48 + (rem % 10)
        rem //= 10
    # number of digits (at least one)
    nd = np.ones_like(mag)
    t = mag // 10
    while (t > 0).any():
        nd += t > 0
        t //= 10
    pos = np.arange(_DENSE_W)
    first = _DENSE_W - nd  # index of the first digit
    digits[pos[None, None, :] < first[:, :, None]] = pad
    sign_pos = first - 1
    r, c = np.nonzero(neg & ~missing)
    digits[r, c, sign_pos[r, c]] = 45
    digits[missing] = pad
    dense_b = np.concatenate([digits, np.full((n, NUM_DENSE, 1), 9, np.uint8)], axis=2)
    parts.append(dense_b.reshape(n, -1))
    cv = np.asarray(cat, dtype=np.uint32)
    hexd = np.empty((n, NUM_SPARSE, 9), dtype=np.uint8)
    for k in range(8):
        nib = (cv >> np.uint32(4 * (7 - k))) & np.uint32(0xF)
        hexd[:, :, k] = np.where(nib < 10, 48 + nib, 87 + nib)
    hexd[:, :, :8][cv == 0] = pad
    hexd[:, :, 8] = 9
    hexd[:, -1, 8] = 10
    parts.append(hexd.reshape(n, -1))
    m = np.concatenate(parts, axis=1)
    return m[m != pad].tobytes()


def write_kaggle_tsv(
    path,
    label,
    dense,
    cat,
    *,
    append: bool = False,
    rows_per_block: int = 100_000,
    compress: bool | None = None,
) -> None:
    """Write rows as Kaggle `train.txt` (or `test.txt` when `label` is None), LF line ends.

    dense: int (n, 13) with `MISSING_DENSE` for empty fields; cat: uint32 (n, 26) with 0 for empty.
    Gzip-compressed when `compress` is True, or when it is None and `path` ends in `.gz`.
    """
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    opener = gzip.open if compress else open
    with opener(path, "ab" if append else "wb") as f:
        for s in range(0, len(dense), rows_per_block):
            e = s + rows_per_block
            f.write(_format_rows(None if label is None else label[s:e], dense[s:e], cat[s:e]))
