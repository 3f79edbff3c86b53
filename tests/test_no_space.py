"""A full disk, simulated by a file-size limit (RLIMIT_FSIZE) on the command's process: the
preprocessing, a checkpoint and a sweep measurement each stop with one line naming what was being
written, leave nothing under a final name, and a rerun with room goes on."""

import subprocess
import sys

import pytest
from conftest import REPO

LIMITED = """
import resource, runpy, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run(script: str, args: list[str], cwd, limit: int | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable] + (["-c", LIMITED, str(limit)] if limit else [])
    command = [*prefix, str(REPO / "scripts" / script), *args, *QUIET]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's")
def test_a_full_disk_is_named_and_a_rerun_goes_on(tmp_path, tiny_data_args):
    data = [a for a in tiny_data_args if not a.startswith("--data.cache_dir")]
    train = [*data, "--data.cache_dir=cache", "--trainer.max_epochs=1"]

    # 1. the cache (arrays of about 1.5 MB) does not fit 500 kB
    done = run("train.py", train, tmp_path, limit=500_000)
    assert done.returncode == 1 and last_line(done).startswith("error: cache/synthetic-")
    assert "File too large while writing it" in last_line(done)
    left = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no cache directory, complete or not

    # 2. with room for the cache (2 MB files) but not for a checkpoint (about 4.5 MB)
    done = run("train.py", train, tmp_path, limit=2_000_000)
    assert done.returncode == 1, done.stderr[-2000:]
    assert ".ckpt: a write came up short while writing it" in last_line(done)
    checkpoints = tmp_path / "runs" / "train" / "version_0" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # nor a temporary file

    # 3. trained with room, then swept without: the measurement's scratch file does not fit
    done = run("train.py", train, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    grid = ["--data.cache_dir=cache", "--sweep.sparsity_level=[0.0, 0.5]", "--sweep.studies=[]"]
    done = run("sweep.py", grid, tmp_path, limit=2_000_000)
    assert done.returncode == 1 and "sweeps/default/.scratch: " in last_line(done)
    done = run("sweep.py", grid, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "8 grid points in sweeps/default" in done.stdout
