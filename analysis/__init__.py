"""Everything that computes: models, activations, harvest, lenses, jobs (no streamlit, no SQL).

Importing the package keeps freed memory in the process (``_hold_freed_memory``), so every process that computes
(the CLI, its worker processes, Ray workers, the viewer, the benchmarks) runs with the same allocator settings.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters."""


def _hold_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory for reuse instead of handing it back to the kernel: every block up
    to 32 MB comes from the heap (a forward pass's activations, a batch's temporaries), and the heap's free top is
    not trimmed below 2 GB. By default a freed block at the heap's top is returned once more than twice the largest
    recent block is free there, so each batch of a forward pass asks the kernel for its tensors again: on the 2-core
    VM that was ~700 MB of fresh pages (~170,000 page faults, ~1 s of system time) per 2,048-token batch, 20-28 % of
    the batch (measured on the harvest, bench/harvest.py). Memory stays at its peak instead of falling back between batches.
    Returns whether the settings took (not on other C libraries)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


HOLDS_FREED_MEMORY = _hold_freed_memory()
