"""Importing ``analysis`` makes glibc keep freed memory: a loop that allocates and frees the same blocks (a forward
pass's batches) stops asking the kernel for fresh pages after its first round. Each case runs in its own process, as
the allocator's settings are per process; the plain process shows the faults the setting removes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


ROUNDS = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "1":
    import analysis
    assert analysis.HOLDS_FREED_MEMORY
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
faults, kept = [], []
for _ in range(8):
    before, rss = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident()
    blocks = [np.ones(3 << 20, dtype=np.float32) for _ in range(4)]  # four 12 MB blocks, written, then freed
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    kept.append(resident() - rss)
print(json.dumps([faults, kept]))
"""


def _rounds(import_analysis: bool) -> tuple[list[int], list[int]]:
    """Per round: page faults, and resident bytes gained once the blocks are freed."""
    out = subprocess.run([sys.executable, "-c", ROUNDS, "1" if import_analysis else "0"], cwd=REPO, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    faults, kept = json.loads(out.stdout)
    return faults, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_are_reused_without_new_page_faults():
    (plain_faults, plain_kept), (held_faults, held_kept) = _rounds(False), _rounds(True)
    # without the setting, freed blocks go back to the kernel (resident memory falls back after every round) and
    # every round faults fresh pages in again (how many depends on huge pages: at least one)
    assert max(plain_kept) < 8 << 20
    assert min(plain_faults[1:]) >= 1
    # with it, the first round's blocks stay resident once freed and later rounds reuse them: no new pages
    assert held_kept[0] > 40 << 20
    assert held_faults[0] >= 1 and max(held_faults[1:]) <= 2
