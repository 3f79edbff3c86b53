"""Hostile input for the Criteo parser: generated malformed lines and files (hypothesis).

Every generated file must end in one of two ways:
- a `CriteoFormatError` whose message starts with `<file>:<line>:`, where <line> is the 1-based
  number of the first bad line (the header counts as line 1), or `<file>: empty file`;
- or, when the input is valid, exactly the values an independent reference parser finds.
With `on_bad_line="skip"` the good lines' values must come out and the bad ones be counted.
Anything else (IndexError, UnicodeDecodeError, zlib.error, a wrong value) fails the test.

The reference parser below is plain Python over the documented format (README, criteo.py's
docstring): `[Id,] [label,] I1..I13, C1..C26`, TAB or `,` separated; label 0/1; integers `-?[0-9]+`
of at most 16 digits within +-(2**31 - 1) or empty; categoricals 1-8 hex digits or empty; trailing
categoricals may be stripped but C1's field must be there; printable ASCII only; CRLF or LF.

Lines are real Kaggle rows mutated: fields replaced by hostile tokens or boundary numbers, fields
dropped or added, separators swapped, bytes (NUL, invalid UTF-8, binary) inserted, lines cut or
replaced by garbage, mixed CRLF/LF, no final newline; files plain, gzip, truncated gzip, corrupted
gzip, empty. Numbers of examples: 750 + 400 + 100 files per run, each of up to 12 lines;
`test_at_least_1000_malformed_inputs` checks what was generated (the counts are in its message).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_dlrm.data.criteo import CriteoFormatError, TextFormat, read_file
from lit_dlrm.data.preprocess import PreprocessOptions, cached_text

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo-samples"
INT_MAX = 2**31 - 1
FEATURES = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
COUNT: Counter = Counter()  # what the fuzz tests generated, checked by the last test
FUZZ_TESTS = {
    "test_lines_in_every_layout",
    "test_whole_files_plain_and_gzip",
    "test_preprocessing_entry",
}
FINISHED: set[str] = set()

# ------------------------------------------------------------------------------------------------
# the reference parser


@dataclass(frozen=True)
class Layout:
    sep: bytes
    has_id: bool
    has_label: bool
    header: bool
    suffix: str

    def header_line(self) -> bytes:
        names = (["Id"] if self.has_id else []) + (["Label"] if self.has_label else []) + FEATURES
        return self.sep.join(n.encode() for n in names)

    def fmt(self, gz: bool = False) -> TextFormat:
        return TextFormat(
            sep=self.sep, header=self.header, has_id=self.has_id, has_label=self.has_label, gzip=gz
        )


LAYOUTS = [
    Layout(b"\t", has_id=False, has_label=True, header=False, suffix=".txt"),  # Kaggle train.txt
    Layout(b"\t", has_id=False, has_label=False, header=False, suffix=".txt"),  # Kaggle test.txt
    Layout(b",", has_id=True, has_label=True, header=True, suffix=".csv"),  # Kaggle CSV copies
    Layout(b",", has_id=False, has_label=True, header=True, suffix=".csv"),
]
DEC = re.compile(r"-?[0-9]{1,16}")
HEX = re.compile(r"[0-9a-fA-F]{1,8}")


def ref_line(line: bytes, lay: Layout):
    """(label, dense, cat) of one line (line end removed), or None when it is malformed."""
    if any(b < 32 and b != 9 or b >= 127 for b in line):
        return None
    fields = line.decode("ascii").split(lay.sep.decode())
    prefix = int(lay.has_id) + int(lay.has_label)
    if not prefix + 14 <= len(fields) <= prefix + 39:
        return None
    fields += [""] * (prefix + 39 - len(fields))
    if lay.has_id:
        if not re.fullmatch(r"[0-9]{1,16}", fields.pop(0)):
            return None
    label = None
    if lay.has_label:
        label = fields.pop(0)
        if label not in ("0", "1"):
            return None
        label = int(label)
    dense = []
    for f in fields[:13]:
        if f and not (DEC.fullmatch(f) and abs(int(f)) <= INT_MAX):
            return None
        dense.append(int(f) if f else 0)
    cat = []
    for f in fields[13:]:
        if f and not HEX.fullmatch(f):
            return None
        cat.append(int(f, 16) if f else 0)
    return label, dense, cat


@dataclass
class Expected:
    rows: list = field(default_factory=list)  # (label, dense, cat) of the good lines
    bad: list = field(default_factory=list)  # 1-based numbers of the bad lines
    lines: int = 0  # data lines (header excluded)
    error: tuple | None = None  # (line or None, text) of an error that skipping cannot avoid


def ref_lines(text: bytes, lay: Layout, first_line: int) -> Expected:
    """Judge every line of `text` (data lines only; the last may lack its line end)."""
    exp = Expected()
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for no, raw in enumerate(lines, first_line):
        row = ref_line(raw[:-1] if raw.endswith(b"\r") else raw, lay)
        if row is None:
            exp.bad.append(no)
        else:
            exp.rows.append(row)
    exp.lines = len(lines)
    if not lines:
        exp.error = (None, "empty file")
    return exp


HEADERS = {
    tuple(n.lower() for n in Layout(b",", i, lab, True, "").header_line().decode().split(",")): (
        i,
        lab,
    )
    for i in (False, True)
    for lab in (False, True)
}


def ref_sniff(data: bytes, suffix: str, has_label: bool | None):
    """Layout of `data` by the documented rules, or an Expected error."""
    if not data.strip(b"\r\n\t, "):
        return Expected(error=(None, "empty file"))
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in data.split(b"\n")]
    first = lines[0]
    sep = b"\t" if b"\t" in first else b"," if (suffix == ".csv" or b"," in first) else b"\t"
    if first.split(sep)[0].strip().isalpha():  # a header line
        names = tuple(n.strip().lower().decode("latin1") for n in first.split(sep))
        if names not in HEADERS or (has_label is not None and HEADERS[names][1] != has_label):
            return Expected(error=(1, ""), bad=[1])
        return Layout(sep, *HEADERS[names], header=True, suffix=suffix)
    if has_label is None:  # lines that fit only the labelled layout vs only the unlabelled one
        labelled_only = sum(ln.count(sep) == 39 for ln in lines[:1000] if ln)
        unlabelled_only = sum(ln.split(sep)[0] not in (b"0", b"1") for ln in lines[:1000] if ln)
        has_label = labelled_only >= unlabelled_only
    return Layout(sep, False, has_label, header=False, suffix=suffix)


def after_header(content: bytes, lay: Layout) -> bytes:
    return (content.split(b"\n", 1)[1:] or [b""])[0] if lay.header else content


def ref_file(content: bytes, suffix: str, has_label: bool | None = None) -> Expected:
    """Expected outcome for a plain (not gzip) file's bytes."""
    lay = ref_sniff(content, suffix, has_label)
    if isinstance(lay, Expected):
        return lay
    return ref_lines(after_header(content, lay), lay, 2 if lay.header else 1)


def ref_gzip(data: bytes, suffix: str, has_label: bool) -> Expected:
    """Expected outcome for a gzip file that may be truncated or corrupted."""
    if data[:2] != b"\x1f\x8b":  # gzip is recognised by its magic bytes: without them, text
        return ref_file(data, suffix, has_label)
    try:
        return ref_file(gzip.decompress(data), suffix, has_label)
    except (OSError, EOFError, zlib.error):
        pass
    d = zlib.decompressobj(wbits=31)
    try:
        readable = d.decompress(data)
    except zlib.error:  # corrupted: where it stops is zlib's business; the file must be named
        return Expected(error=("any", ""))
    if d.eof:  # one good member, then garbage
        return Expected(error=("any", ""))
    # truncated: what was readable is judged; the error names the line where readable data stops
    complete = readable[: readable.rfind(b"\n") + 1]
    lay = ref_sniff(readable, suffix, has_label)
    if isinstance(lay, Expected):
        return Expected(error=(1, "")) if lay.error[0] is None else lay
    exp = ref_lines(after_header(complete, lay), lay, 2 if lay.header else 1)
    first_unread = (1 if lay.header and complete else 0) + exp.lines + 1
    exp.error = (first_unread, "cannot decompress")
    return exp


# ------------------------------------------------------------------------------------------------
# checking the parser against the reference


def first_problem(exp: Expected, skip: bool) -> tuple:
    """(line, text) of the error the parser must raise: line None for `file: empty file`, "any" when
    only the file must be named. Skipping drops bad lines but not unrecoverable errors."""
    if exp.error and (skip or exp.error[0] in (None, "any")):
        return exp.error
    return min(([(exp.bad[0], "")] if exp.bad else []) + ([exp.error] if exp.error else []))


def check_error(err: CriteoFormatError, name: str, exp: Expected, skip: bool = False) -> None:
    msg = str(err)
    line, text = first_problem(exp, skip)
    if line == "any":
        assert msg.startswith(f"{name}:"), msg
    elif line is None:
        assert msg.startswith(f"{name}: {text}"), msg
    else:
        assert msg.startswith(f"{name}:{line}: ") and text in msg, (msg, line, text)
    assert not msg.endswith("malformed line"), f"the parser and explain_line disagree: {msg}"


def check_rows(block, rows: list) -> None:
    assert len(block) == len(rows)
    if not rows:
        return
    labels, dense, cat = zip(*rows)
    if labels[0] is None:
        assert block.label is None
    else:
        assert block.label.tolist() == list(labels)
    assert block.dense.dtype == np.int32 and block.dense.tolist() == [list(d) for d in dense]
    assert block.cat.dtype == np.uint32 and block.cat.tolist() == [list(c) for c in cat]


def check(path: Path, exp: Expected, **kwargs) -> None:
    """read_file(path) in both modes against the reference's expectation."""
    COUNT["files"] += 1
    COUNT["malformed files"] += bool(exp.bad or exp.error)
    COUNT["malformed lines"] += len(exp.bad)
    if exp.bad or exp.error:
        with pytest.raises(CriteoFormatError) as err:
            read_file(path, **kwargs)
        check_error(err.value, path.name, exp)
    else:
        block, stats = read_file(path, **kwargs)
        check_rows(block, exp.rows)
        assert stats.skipped == 0 and stats.lines == stats.rows == len(exp.rows)
    if exp.error:  # unrecoverable (empty, header, unreadable): skipping does not help
        with pytest.raises(CriteoFormatError) as err:
            read_file(path, on_bad_line="skip", **kwargs)
        check_error(err.value, path.name, exp, skip=True)
        return
    block, stats = read_file(path, on_bad_line="skip", **kwargs)
    check_rows(block, exp.rows)
    assert (stats.lines, stats.rows, stats.skipped) == (exp.lines, len(exp.rows), len(exp.bad))
    assert [int(m.split(":")[1]) for m in stats.examples] == exp.bad[: len(stats.examples)]
    assert len(stats.examples) == min(len(exp.bad), 5)


# ------------------------------------------------------------------------------------------------
# strategies


def _pool() -> list[list[str]]:
    """40 fields (label, I1..I13, C1..C26) of real rows, padded where trailing ones are stripped."""
    rows = []
    for name in ("train-paddlerec-a.tsv", "train-first1000-stripped.tsv"):
        for line in (SAMPLES / name).read_text().splitlines()[:25]:
            fields = line.split("\t")
            rows.append(fields + [""] * (40 - len(fields)))
    return rows


POOL = _pool()
TOKENS = [
    "",
    "-",
    "--1",
    "+1",
    "1.0",
    "1e3",
    " 1",
    "1 ",
    "0x1f",
    "1_000",
    "nan",
    "inf",
    "-0",
    "007",
    "2147483647",
    "2147483648",
    "-2147483647",
    "-2147483648",
    "99999999999999999999",
    "0000000000000007",
    "00000000000000007",
    "-0000000000000000",
    "ffffffff",
    "FFFFFFFF",
    "aBcD",
    "100000000",
    "0ffffffff",
    "g",
    "xyz",
    "label",
    "0",
    "1",
    "2",
    "-1",
    "00",
    "10",
    "true",
    "\x00",
    "\x7f",
    "\r",
    ",",
    ";",
    " ",
    "\t",
    "\t\t",
    "é",
    "١",
    "\ufeff1",
]
NUMBERS = st.one_of(
    st.integers(-12, 12),
    st.sampled_from(
        [
            INT_MAX,
            INT_MAX + 1,
            -INT_MAX,
            -INT_MAX - 1,
            10**15,
            10**16,
            -(10**16),
            2**32,
            2**63,
            -(2**64),
        ]
    ),
    st.integers(-(10**18), 10**18),
).flatmap(
    lambda v: st.sampled_from(
        [str(v), f"{v:x}", f"{v:X}", str(v).replace("-", "-000"), "0" * 10 + str(v)]
    )
)
FIELD = st.one_of(
    st.sampled_from(TOKENS).map(lambda t: t.encode()),
    NUMBERS.map(str.encode),
    st.binary(max_size=5),
)
SEPS = [b",", b";", b" ", b"\t\t", b"", b"|", b"\x00", b"\r", b"\t,"]
KINDS = (
    ["valid"] * 4
    + ["field"] * 5
    + ["strip", "drop", "extra", "sep", "bytes", "cut", "garbage", "empty", "newline"]
)


@st.composite
def line(draw, lay: Layout) -> bytes:
    base = POOL[draw(st.integers(0, len(POOL) - 1))]
    fields = [f.encode() for f in (base if lay.has_label else base[1:])]
    if lay.has_id:
        fields.insert(0, str(draw(st.integers(0, 10**9))).encode())
    kind = draw(st.sampled_from(KINDS))
    if kind == "field":  # one to three fields replaced by hostile tokens or boundary numbers
        for _ in range(draw(st.integers(1, 3))):
            fields[draw(st.integers(0, len(fields) - 1))] = draw(FIELD)
    elif kind == "strip":  # trailing categoricals emptied and stripped: valid unless it eats C1
        k = draw(st.integers(1, 27))
        fields = fields[:-k]
    elif kind == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif kind == "extra":
        fields.insert(draw(st.integers(0, len(fields))), draw(FIELD))
    joined = lay.sep.join(fields)
    if kind == "sep":  # one separator swapped for another (mixed separators)
        parts = joined.split(lay.sep)
        i = draw(st.integers(1, len(parts) - 1))
        joined = lay.sep.join(parts[:i]) + draw(st.sampled_from(SEPS)) + lay.sep.join(parts[i:])
    elif kind == "bytes":  # NUL, invalid UTF-8, binary garbage inside the line
        at = draw(st.integers(0, len(joined)))
        junk = draw(
            st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xe9", b"\x80"])
            | st.binary(min_size=1, max_size=4)
        )
        joined = joined[:at] + junk + joined[at:]
    elif kind == "cut":
        joined = joined[: draw(st.integers(0, len(joined)))]
    elif kind == "garbage":
        joined = draw(st.binary(max_size=60))
    elif kind == "empty":
        joined = b""
    elif kind == "newline":  # a line broken in two
        at = draw(st.integers(0, len(joined)))
        joined = joined[:at] + b"\n" + joined[at:]
    return joined


@st.composite
def text_file(draw, lay: Layout, max_lines: int = 12) -> bytes:
    lines = draw(st.lists(line(lay), min_size=0, max_size=max_lines))
    ends = draw(st.sampled_from(["lf", "crlf", "mixed"]))
    out = [lay.header_line()] if lay.header else []
    out += lines
    text = b""
    for i, ln in enumerate(out):
        end = b"\r\n" if ends == "crlf" or (ends == "mixed" and draw(st.booleans())) else b"\n"
        text += ln + (
            end if i < len(out) - 1 or draw(st.booleans()) else b""
        )  # final line end optional
    return text


SETTINGS = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


# ------------------------------------------------------------------------------------------------
# the tests


@settings(max_examples=750, **SETTINGS)
@given(data=st.data(), lay=st.sampled_from(LAYOUTS))
def test_lines_in_every_layout(workdir, data, lay):
    """Mutated lines in each layout, format given, blocks of 64..2048 bytes (lines cut by reads)."""
    content = data.draw(text_file(lay))
    path = workdir / f"train{lay.suffix}"
    path.write_bytes(content)
    exp = ref_lines(after_header(content, lay), lay, 2 if lay.header else 1)
    check(path, exp, fmt=lay.fmt(), block_bytes=data.draw(st.integers(64, 2048)))
    FINISHED.add("test_lines_in_every_layout")


@settings(max_examples=400, **SETTINGS)
@given(
    data=st.data(),
    lay=st.sampled_from(LAYOUTS),
    how=st.sampled_from(["plain", "plain", "gzip", "truncated", "flipped", "empty"]),
)
def test_whole_files_plain_and_gzip(workdir, data, lay, how):
    """Whole files with the format sniffed: plain, gzip, truncated or corrupted gzip, empty."""
    content = b"" if how == "empty" else data.draw(text_file(lay))
    path = workdir / (
        f"file{lay.suffix}.gz" if how in ("gzip", "truncated", "flipped") else f"file{lay.suffix}"
    )
    if how == "plain" or how == "empty":
        path.write_bytes(content)
        check(path, ref_file(content, lay.suffix), block_bytes=data.draw(st.integers(64, 2048)))
        FINISHED.add("test_whole_files_plain_and_gzip")
        return
    packed = gzip.compress(content, mtime=0)
    if how == "truncated":
        packed = packed[: data.draw(st.integers(0, len(packed) - 1))]
    elif how == "flipped":
        at = data.draw(st.integers(0, len(packed) - 1))
        packed = (
            packed[:at] + bytes([packed[at] ^ data.draw(st.integers(1, 255))]) + packed[at + 1 :]
        )
    path.write_bytes(packed)
    if not packed:
        exp = Expected(error=(None, "empty file"))
    else:
        exp = ref_gzip(packed, lay.suffix, lay.has_label)
    check(path, exp, has_label=lay.has_label, block_bytes=data.draw(st.integers(64, 2048)))
    FINISHED.add("test_whole_files_plain_and_gzip")


@settings(max_examples=100, **SETTINGS)
@given(data=st.data(), lay=st.sampled_from(LAYOUTS))
def test_preprocessing_entry(workdir, data, lay):
    """The cache builder (`cached_text`, what `--data.source=kaggle` runs) on hostile files:
    the parser's error, and nothing left that looks like a cache; or, skipping, exact arrays."""
    content = data.draw(text_file(lay, max_lines=8))
    exp = ref_file(content, lay.suffix)
    path = workdir / f"prep{lay.suffix}"
    path.write_bytes(content)
    COUNT["files"] += 1
    COUNT["malformed files"] += bool(exp.bad or exp.error)
    COUNT["malformed lines"] += len(exp.bad)
    for mode in ("error", "skip"):
        cache = workdir / f"cache-{COUNT['files']}-{mode}"
        if exp.error or (exp.bad and mode == "error") or not exp.rows:
            with pytest.raises(CriteoFormatError) as err:
                cached_text(path, cache, PreprocessOptions(on_bad_line=mode), progress=False)
            if exp.rows or exp.error or mode == "error":
                check_error(err.value, path.name, exp, skip=mode == "skip")
            else:
                assert str(err.value).startswith(f"{path.name}: no valid rows"), err.value
            assert not cache.exists() or not [
                p for p in cache.iterdir() if not p.name.endswith(".lock")
            ]
            continue
        d, meta = cached_text(path, cache, PreprocessOptions(on_bad_line=mode), progress=False)
        labels, dense, cat = zip(*exp.rows)
        assert (meta["rows"], meta["skipped_lines"], meta["lines"]) == (
            len(exp.rows),
            len(exp.bad),
            exp.lines,
        )
        assert np.load(d / "dense.npy").tolist() == [[max(v, 0) for v in row] for row in dense]
        ids = [dict() for _ in range(26)]  # first appearance per feature
        expected_ids = [
            [ids[j].setdefault(v, len(ids[j])) for j, v in enumerate(row)] for row in cat
        ]
        assert np.load(d / "sparse.npy").tolist() == expected_ids
        assert meta["table_sizes"] == [len(t) for t in ids]
        if labels[0] is not None:
            assert np.load(d / "label.npy").tolist() == list(labels)
    FINISHED.add("test_preprocessing_entry")


def test_at_least_1000_malformed_inputs():
    """The fuzz tests above generated what this file promises (run after them, in file order)."""
    if FINISHED != FUZZ_TESTS:
        pytest.skip("runs only together with all the fuzz tests of this file")
    print(dict(COUNT))
    assert COUNT["malformed files"] >= 1000 and COUNT["malformed lines"] >= 1000, dict(COUNT)
