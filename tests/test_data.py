"""Criteo text parsing and preprocessing on real rows (../shared/data/criteo-samples) and bad input.

Expected values are computed here independently, line by line in plain Python (split, int(x, 16),
a dict per feature), and compared with the vectorised parser and the cache.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lit_dlrm.data.criteo import CriteoFormatError, read_file, sniff_format, write_kaggle_tsv
from lit_dlrm.data.preprocess import PreprocessOptions, cached_text, split_ranges

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo-samples"
ALL_SAMPLES = sorted(p for p in SAMPLES.glob("*") if p.suffix in (".tsv", ".csv"))


def reference_rows(path: Path):
    """(labels or None, dense clipped, raw hashes) parsed the slow, obvious way."""
    text = path.read_bytes().decode("ascii")
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    sep = "," if path.suffix == ".csv" else "\t"
    if path.suffix == ".csv":
        lines = [",".join(ln.split(",")[1:]) for ln in lines[1:]]  # drop header and Id
    labelled = "test" not in path.name
    width = 40 if labelled else 39
    labels, dense, cat = [], [], []
    for ln in lines:
        f = ln.split(sep)
        f += [""] * (width - len(f))
        if labelled:
            labels.append(int(f.pop(0)))
        dense.append([max(int(x), 0) if x else 0 for x in f[:13]])
        cat.append([int(x, 16) if x else 0 for x in f[13:]])
    return (labels if labelled else None), dense, cat


def reference_ids(cat, modulo=None):
    dicts = [dict() for _ in range(26)]
    out = []
    for row in cat:
        ids = []
        for j, v in enumerate(row):
            if modulo:
                v %= modulo
            ids.append(dicts[j].setdefault(v, len(dicts[j])))
        out.append(ids)
    return np.array(out), [len(d) for d in dicts]


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.name)
def test_every_sample_parses_to_the_reference_values(path):
    block, stats = read_file(path)
    labels, dense, cat = reference_rows(path)
    assert stats.skipped == 0 and len(block) == len(dense) == stats.rows
    assert (np.clip(block.dense, 0, None) == np.array(dense)).all()
    assert (block.cat == np.array(cat, dtype=np.uint32)).all()
    if labels is None:
        assert block.label is None
    else:
        assert (block.label == np.array(labels)).all()


def test_exact_values_of_known_rows():
    block, _ = read_file(SAMPLES / "train-paddlerec-a.tsv")
    # first line: 0 <empty> 0 5 4 13275 14 35 4 41 <empty> 4 0 4 05db9164 f0cf0024 ...
    assert block.label[0] == 0
    assert block.dense[0].tolist() == [0, 0, 5, 4, 13275, 14, 35, 4, 41, 0, 4, 0, 4]
    assert block.cat[0, 0] == 0x05DB9164 and block.cat[0, 1] == 0xF0CF0024
    assert block.cat[0, 21] == 0  # empty C22


def test_negative_integers_are_kept_by_the_parser_and_clipped_in_the_cache(tmp_path):
    block, _ = read_file(SAMPLES / "train-first1000-stripped.tsv")
    assert block.dense.min() < 0
    d, meta = cached_text(
        SAMPLES / "train-first1000-stripped.tsv", tmp_path, PreprocessOptions(), progress=False
    )
    dense = np.load(d / "dense.npy")
    assert dense.min() == 0 and (dense == np.clip(block.dense, 0, None)).all()


def test_stripped_tsv_equals_first_1000_rows_of_the_crlf_csv(tmp_path):
    a, _ = read_file(SAMPLES / "train-first1000-stripped.tsv")
    b, _ = read_file(SAMPLES / "train-first1999-header-crlf.csv")
    assert (
        (a.label == b.label[:1000]).all()
        and (a.dense == b.dense[:1000]).all()
        and (a.cat == b.cat[:1000]).all()
    )
    # and as cached arrays: the CSV's first 1000 rows through the cache give the same ids
    head = tmp_path / "head.csv"
    head.write_bytes(
        b"".join(
            (SAMPLES / "train-first1999-header-crlf.csv")
            .read_bytes()
            .splitlines(keepends=True)[:1001]
        )
    )
    da, _ = cached_text(
        SAMPLES / "train-first1000-stripped.tsv",
        tmp_path / "c",
        PreprocessOptions(),
        progress=False,
    )
    db, _ = cached_text(head, tmp_path / "c", PreprocessOptions(), progress=False)
    for name in ("dense", "sparse", "label"):
        assert (np.load(da / f"{name}.npy") == np.load(db / f"{name}.npy")).all(), name


def test_formats_are_sniffed():
    assert sniff_format(SAMPLES / "train-first1999-header-crlf.csv").has_id
    assert not sniff_format(SAMPLES / "test-unlabelled-first1000.tsv").has_label
    assert sniff_format(SAMPLES / "train-paddlerec-c-stripped.tsv").has_label


def test_gzip_and_lowercase_label_header(tmp_path):
    src = SAMPLES / "train-paddlerec-b.tsv"
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    a, _ = read_file(src)
    b, _ = read_file(gz)
    assert (a.cat == b.cat).all() and (a.dense == b.dense).all()
    header = "label," + ",".join([f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
    csv = tmp_path / "t.csv"
    csv.write_text(header + "\n" + src.read_text().replace("\t", ","))
    c, _ = read_file(csv)
    assert (a.cat == c.cat).all() and (a.label == c.label).all()


def test_cache_ids_splits_and_meta(tmp_path):
    path = SAMPLES / "train-first1999-header-crlf.csv"
    d, meta = cached_text(path, tmp_path, PreprocessOptions(), progress=False)
    labels, dense, cat = reference_rows(path)
    ids, sizes = reference_ids(cat)
    assert (np.load(d / "sparse.npy", mmap_mode="r") == ids).all()
    assert meta["table_sizes"] == sizes
    assert (np.load(d / "label.npy") == labels).all()
    # 1999 rows: divmod(1999, 7) = (285, 4): days 0-3 have 286 rows, days 4-6 285
    assert meta["days"] == [0, 286, 572, 858, 1144, 1429, 1714, 1999]
    assert meta["splits"] == {"train": [0, 1714], "test": [1714, 1857], "val": [1857, 1999]}
    on_disk = json.loads((d / "meta.json").read_text())
    assert on_disk["complete"] and on_disk["rows"] == 1999


def test_split_matches_dlrm_on_kaggle_size():
    s = split_ranges(45_840_617)
    assert s["test"][1] - s["test"][0] == 3_274_330 and s["val"][1] - s["val"][0] == 3_274_329
    assert s["train"] == [0, 39_291_958]


def test_max_ind_range_and_min_frequency(tmp_path):
    path = SAMPLES / "train-random1999-header.csv"
    _, _, cat = reference_rows(path)
    d, meta = cached_text(path, tmp_path, PreprocessOptions(max_ind_range=97), progress=False)
    ids, sizes = reference_ids(cat, modulo=97)
    assert (np.load(d / "sparse.npy") == ids).all() and meta["table_sizes"] == sizes
    assert max(sizes) <= 97

    d2, meta2 = cached_text(path, tmp_path, PreprocessOptions(min_frequency=3), progress=False)
    sp = np.load(d2 / "sparse.npy")
    for j in (1, 13, 25):  # check a few features against a direct computation
        col = [row[j] for row in cat]
        counts = {v: col.count(v) for v in set(col)}
        mapping, expect = {}, []
        for v in col:
            key = v if counts[v] >= 3 else "rare"
            expect.append(mapping.setdefault(key, len(mapping)))
        assert sp[:, j].tolist() == expect
        assert meta2["table_sizes"][j] == len(mapping)


def test_cache_is_reused_and_rebuilt_when_options_or_input_change(tmp_path):
    src = tmp_path / "train.txt"
    src.write_bytes((SAMPLES / "train-paddlerec-a.tsv").read_bytes())
    d1, m1 = cached_text(src, tmp_path / "c", PreprocessOptions(), progress=False)
    d1b, m1b = cached_text(src, tmp_path / "c", PreprocessOptions(), progress=False)
    assert d1 == d1b and m1["created"] == m1b["created"]  # reused, not rebuilt
    d2, _ = cached_text(src, tmp_path / "c", PreprocessOptions(max_ind_range=10), progress=False)
    assert d2 != d1
    src.write_bytes((SAMPLES / "train-paddlerec-b.tsv").read_bytes())
    d3, m3 = cached_text(src, tmp_path / "c", PreprocessOptions(), progress=False)
    assert d3 != d1 and m3["input"]["sha256_head_tail"] != m1["input"]["sha256_head_tail"]


def test_interrupted_build_never_looks_complete(tmp_path):
    src = SAMPLES / "train-paddlerec-a.tsv"
    d, _ = cached_text(src, tmp_path, PreprocessOptions(), progress=False)
    # simulate a killed build: a temp dir with arrays but no meta, and a final dir without meta.json
    (d / "meta.json").unlink()
    leftover = tmp_path / f".tmp-{d.name}-deadbeef"
    leftover.mkdir()
    (leftover / "sparse.npy").write_bytes(b"partial")
    d2, meta = cached_text(src, tmp_path, PreprocessOptions(), progress=False)
    assert d2 == d and meta["complete"] and (d / "meta.json").exists()
    assert not leftover.exists()

    def boom(*a, **k):
        raise KeyboardInterrupt

    import lit_dlrm.data.preprocess as pp

    orig = pp.build_arrays
    pp.build_arrays = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            cached_text(src, tmp_path / "other", PreprocessOptions(), progress=False)
    finally:
        pp.build_arrays = orig
    assert not any((tmp_path / "other").glob("kaggle-*")) and not any(
        (tmp_path / "other").glob(".tmp-*")
    )


# ------------------------------------------------------------------------------------------------
# bad input


GOOD = (SAMPLES / "train-paddlerec-a.tsv").read_bytes().split(b"\n")[:5]


def write_with(tmp_path, bad_line: bytes, at: int = 3, name="train.txt") -> Path:
    lines = list(GOOD)
    lines.insert(at - 1, bad_line)
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


@pytest.mark.parametrize(
    "bad, expect",
    [
        (GOOD[0] + b"\t1", "expected 40 tab-separated fields, got 41"),
        (b"\t".join(GOOD[0].split(b"\t")[:10]), "expected 40 tab-separated fields, got 10"),
        (
            GOOD[0].replace(b"05db9164", b"05dx9164"),
            "C1: expected up to 8 hex digits, got '05dx9164'",
        ),
        (GOOD[0].replace(b"05db9164", b"105db9164"), "C1: expected up to 8 hex digits"),
        (GOOD[0].replace(b"13275", b"13.75"), "I5: expected an integer, got '13.75'"),
        (GOOD[0].replace(b"13275", b"-"), "I5: expected an integer"),
        (b"2" + GOOD[0][1:], "label: expected 0 or 1, got '2'"),
        (GOOD[0][:30] + b"\x00\x00\xff" + GOOD[0][30:], "binary data"),
        (GOOD[0][:30] + "é".encode() + GOOD[0][30:], "binary data"),
        (b"", "empty line"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, expect):
    p = write_with(tmp_path, bad, at=3)
    with pytest.raises(CriteoFormatError) as e:
        read_file(p)
    msg = str(e.value)
    assert msg.startswith("train.txt:3: "), msg
    assert expect in msg, msg
    # skip mode: dropped and counted
    block, stats = read_file(p, on_bad_line="skip")
    assert (
        stats.skipped == 1
        and len(block) == len(GOOD)
        and stats.examples[0].startswith("train.txt:3:")
    )


def test_bad_line_in_csv_counts_the_header(tmp_path):
    lines = (SAMPLES / "train-random1999-header.csv").read_bytes().split(b"\n")
    lines[7] = lines[7] + b",x"
    p = tmp_path / "t.csv"
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(
        CriteoFormatError, match=r"^t.csv:8: expected 41 comma-separated fields, got 42"
    ):
        read_file(p)


def test_empty_file_and_garbage(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CriteoFormatError, match="empty.txt: empty file"):
        read_file(empty)
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CriteoFormatError, match=r"garbage.txt:1: "):
        read_file(garbage)
    bad_gz = tmp_path / "bad.txt.gz"
    bad_gz.write_bytes(gzip.compress(b"0\t1\n" * 100)[:-12] + b"xxxxxxxxxxxx")
    with pytest.raises(CriteoFormatError, match="bad.txt.gz"):
        read_file(bad_gz)


def test_skip_mode_reports_the_count_in_meta(tmp_path, caplog):
    p = write_with(tmp_path, GOOD[0] + b"\textra", at=2)
    with pytest.raises(CriteoFormatError, match="train.txt:2:"):
        cached_text(p, tmp_path / "c", PreprocessOptions(), progress=False)
    with caplog.at_level("WARNING"):
        d, meta = cached_text(
            p, tmp_path / "c", PreprocessOptions(on_bad_line="skip"), progress=False
        )
    assert meta["skipped_lines"] == 1 and meta["rows"] == len(GOOD)
    assert "skipped 1 bad line" in caplog.text


def test_writer_round_trip_with_small_blocks(tmp_path):
    block, _ = read_file(SAMPLES / "train-random1999-header.csv")
    p = tmp_path / "rt.txt"
    dense = block.dense.astype(np.int64)
    write_kaggle_tsv(p, block.label, dense, block.cat, rows_per_block=333)
    again, _ = read_file(p, block_bytes=4096)  # many blocks: lines cut across reads
    assert (
        (again.dense == block.dense).all()
        and (again.cat == block.cat).all()
        and (again.label == block.label).all()
    )
