"""benchmarks/memory.py: a process tree's memory counts the pages its processes share once."""

import sys

from benchmarks.memory import run_measured

HELD_MIB, OWN_MIB, CHILDREN = 64, 16, 4
FORKED = f"""
import os, time
import numpy as np
held = np.ones({HELD_MIB} * 2**20 // 8)  # shared with the children, which never write it
children = []
for _ in range({CHILDREN}):
    pid = os.fork()
    if pid == 0:
        own = np.ones({OWN_MIB} * 2**20 // 8)  # each child's own
        time.sleep(1.0)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_pages_forked_workers_share_with_their_parent_count_once(tmp_path):
    _, _, peak = run_measured([sys.executable, "-c", FORKED], tmp_path)
    # the children's own pages counted; the held ones once, where summing the five processes'
    # RSS would count them five times
    own = CHILDREN * OWN_MIB
    assert HELD_MIB + own <= peak.anon_mib <= peak.rss_mib < 2 * (HELD_MIB + own), peak
