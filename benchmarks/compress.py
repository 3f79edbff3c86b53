"""Checkpoint write and read: torch.save + deflate (the reference) vs lit_dlrm's zstd_sparse.

    python -m benchmarks.compress --scale kaggle   # the reference's deflate: about a minute a level
    python -m benchmarks.compress --scale small

The state dict is a DLRM's (Kaggle-sized tables as in benchmarks/sparsify.py, random MLPs of the
Kaggle architecture), pruned with L1 (1, 1) at levels 0.0, 0.5, 0.9 and 1.0 with +0.0 zeros (the
sweep's default), and at 0.5, 0.9 and 1.0 also with the reference's signed zeros (its ``weight *
mask`` leaves -0.0 for pruned negatives, which deflate handles badly). Per level, both formats
write and read the same state dict, ABBA, ``repeats`` times. The reference side is the
reference's own code (``torch.save`` to a ``.pt`` file, zipped by ``zipfile`` at its default
level); the sweep's zip (:func:`~lit_dlrm.sparsity.compression.reference_zip_size`: one pass,
zlib-ng at the same level, 16 MiB chunks deflated on 2 threads) runs beside it, in its own row.
Threads: zipfile deflates on one thread; the sweep's zip and zstd_sparse use a thread per core,
as the sweep runs them, and zstd_sparse again on one thread (``workers=1``) for a matched row.
Same work: each format's file has the same bytes on every run, zstd_sparse reads back bit for
bit, the sweep's zip holds ``torch.save``'s bytes (checked once per state dict, untimed) and
differs from zipfile's in size by less than 1% (the timed runs' files).
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from benchmarks.harness import (
    OURS,
    REF,
    SLOW_REPEATS,
    Sample,
    alternate,
    check_same_work,
    compare,
    main_for,
)
from benchmarks.sparsify import CAPS, shared_tables
from lit_dlrm.sparsity.compression import (
    SizeResult,
    load_compressed,
    reference_zip_size,
    save_compressed,
    zstd_sparse_size,
)
from lit_dlrm.sparsity.prune import prune

# (level, signed zeros); signed at level 0 would be the +0.0 state dict bit for bit (none pruned)
LEVELS = (
    (0.0, False),
    (0.5, False),
    (0.9, False),
    (1.0, False),
    (0.5, True),
    (0.9, True),
    (1.0, True),
)
BOT = (13, 512, 256, 64, 16)
TOP = (367, 512, 256, 1)


def mlp_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for prefix, dims in (("bot_l", BOT), ("top_l", TOP)):
        for j, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
            sd[f"{prefix}.{2 * j}.weight"] = torch.randn(o, i, generator=g) * (2 / (i + o)) ** 0.5
            sd[f"{prefix}.{2 * j}.bias"] = torch.randn(o, generator=g) * (1 / o) ** 0.5
    return sd


def round_trips(sd: dict[str, torch.Tensor], tmp: str) -> None:
    """zstd_sparse reads back bit for bit (-0.0 included), or AssertionError."""
    path = f"{tmp}/check.lds"
    save_compressed(sd, path)
    back = load_compressed(path)
    for name, t in sd.items():
        same = back[name].view(torch.int32).equal(t.view(torch.int32))
        if not same:
            raise AssertionError(f"zstd_sparse: {name} does not read back bit for bit")


def zipfile_size(sd: dict[str, torch.Tensor], tmp: str, measure_read: bool = True) -> SizeResult:
    """The reference's own way: ``torch.save`` to a file, ``zipfile`` deflates it (default
    level); the size, and the seconds to write and, if ``measure_read``, to read it back
    (extract + ``torch.load``; else ``read_s`` is nan)."""
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        pt, zpath = Path(work) / "model.pt", Path(work) / "model.zip"
        start = time.perf_counter()
        torch.save(sd, pt)
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(pt, arcname=pt.name)
        pt.unlink()
        write_s = time.perf_counter() - start
        if not measure_read:
            return SizeResult("zipfile", os.path.getsize(zpath), write_s, float("nan"))
        start = time.perf_counter()
        with zipfile.ZipFile(zpath) as zf:
            torch.load(zf.extract(pt.name, path=work), weights_only=True)
        read_s = time.perf_counter() - start
        return SizeResult("zipfile", os.path.getsize(zpath), write_s, read_s)


def same_zip_contents(sd: dict[str, torch.Tensor], tmp: str) -> None:
    """The sweep's zip holds ``torch.save``'s bytes and passes its CRC check (or AssertionError)."""
    kept = Path(tmp) / "kept"
    ours = reference_zip_size(sd, tmp, keep_dir=kept, stem="ours", measure_read=False)
    with zipfile.ZipFile(ours.path) as zf:
        if zf.testzip() is not None:
            raise AssertionError("the sweep's zip: a member fails its CRC check")
        digest = hashlib.sha1(zf.read("ours.pt")).hexdigest()
    os.unlink(ours.path)
    saved = io.BytesIO()
    torch.save(sd, saved)  # a stream's: records under 'archive/' (a file's: under its stem)
    if hashlib.sha1(saved.getbuffer()).hexdigest() != digest:
        raise AssertionError("the sweep's zip does not hold torch.save's bytes")


def zip_sizes(ours: int, theirs: int, within_1pct: bool = True) -> str:
    """The sizes of the sweep's zip and zipfile's, for the row's note; if ``within_1pct``, they
    differ by less than 1% (or AssertionError). The bound holds for +0.0 zeros, what the sweep
    writes by default; the reference's signed zeros (random sign bits) zlib-ng deflates a few
    percent smaller than zlib: shown, not bound."""
    if within_1pct and abs(ours / theirs - 1) >= 0.01:
        raise AssertionError(f"zip sizes differ by 1% or more: {ours:,} vs {theirs:,}")
    return f"bytes: one pass {ours:,}, zipfile {theirs:,} ({ours / theirs - 1:+.3%})"


def run(scale: str = "small", repeats: int | None = None, levels=LEVELS) -> list[dict]:
    repeats = repeats or SLOW_REPEATS[scale]
    tables = list(shared_tables(scale))
    mlp = mlp_state(torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level, signed in levels:
            pruned = [torch.empty_like(t) for t in tables]
            prune(tables, "L1", (1, 1), level, pruned, signed_zeros=signed)
            sd = {f"emb_l.{i}.weight": t for i, t in enumerate(pruned)} | mlp
            round_trips(sd, tmp)
            same_zip_contents(sd, tmp)
            results = {}

            def side(name, measure, results=results):
                def one():
                    r = measure()
                    results.setdefault(name, []).append(r)
                    return Sample(r.write_s, None, r.bytes)

                return one

            sides = {
                OURS: side(OURS, lambda sd=sd: zstd_sparse_size(sd, tmp)),
                REF: side(REF, lambda sd=sd: zipfile_size(sd, tmp)),
                "zip one pass": side("zip", lambda sd=sd: reference_zip_size(sd, tmp)),
            }
            if not signed:
                sides["zstd 1 thread"] = side(
                    "1", lambda sd=sd: zstd_sparse_size(sd, tmp, workers=1)
                )
            samples = alternate(sides, repeats)
            for name in samples:  # each format: the same bytes on every run
                check_same_work(f"compress {level:g} {name}", {name: samples[name]})
            one_pass = {OURS: samples.pop("zip one pass"), REF: samples[REF]}
            if samples[OURS][0].work != samples.get("zstd 1 thread", samples[OURS])[0].work:
                raise AssertionError(f"compress {level:g}: zstd's size depends on its threads")
            ours_b, ref_b = samples[OURS][0].work, samples[REF][0].work
            zeros = "signed zeros (-0.0)" if signed else "+0.0 zeros"
            name = f"compress {level:g}{' signed' if signed else ''}"
            sizes = (
                f"{zeros}; bytes: zstd_sparse {ours_b:,}, deflate {ref_b:,} "
                f"(zstd_sparse/deflate {ours_b / ref_b:.3f})"
            )
            rows.append(
                compare(f"{name} write", "s", samples, note=f"zstd: a tensor per core; {sizes}")
            )
            if not signed:
                matched = {OURS: samples["zstd 1 thread"], REF: samples[REF]}
                rows.append(
                    compare(f"{name} write, 1 thread each", "s", matched, note="threads matched")
                )
            reads = {k: [Sample(r.read_s) for r in results[k]] for k in (OURS, REF)}
            rows.append(compare(f"{name} read", "s", reads, note=zeros))
            zipped = zip_sizes(one_pass[OURS][0].work, ref_b, within_1pct=not signed)
            note = f"lit_dlrm: the sweep's zip (one pass, zlib-ng); {zeros}; {zipped}"
            rows.append(compare(f"{name} zip write", "s", one_pass, note=note))
            gc.collect()
    return rows


def main(argv=None) -> None:
    main_for("compress", run, argv, __doc__.splitlines()[0], sorted(CAPS))


if __name__ == "__main__":
    main()
