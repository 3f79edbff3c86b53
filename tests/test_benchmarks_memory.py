"""benchmarks/memory.py: a process tree's memory counts the pages its processes share once."""

import sys

from benchmarks.memory import run_measured

HELD_MIB = 64
FORKED = f"""
import os, time
import numpy as np
held = np.ones({HELD_MIB} * 2**20 // 8)  # shared with the children, which never write it
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        time.sleep(1.0)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_pages_forked_workers_share_with_their_parent_count_once(tmp_path):
    _, _, peak = run_measured([sys.executable, "-c", FORKED], tmp_path)
    # summed per process, the five processes' RSS would count the held pages five times
    assert HELD_MIB <= peak.anon_mib <= peak.rss_mib < 2.5 * HELD_MIB, peak
