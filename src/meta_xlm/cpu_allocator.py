"""Make glibc's malloc keep and reuse freed memory in CPU training.

By default glibc serves every allocation above a (dynamic) threshold with a fresh `mmap` and returns freed heap
above another threshold to the kernel. A training step allocates and frees the same large activations every
step, so each step touches fresh pages again and pays a page fault per 4 KiB on first touch: measured on the
throughput benchmark (benchmarks/model_throughput.py), elementwise ops ran 3-10x slower than their arithmetic and
a whole step up to ~1.2x slower. Fixing both thresholds (as the `MALLOC_*_` environment variables would, but from
inside a running process) lets the heap keep its pages; jemalloc or tcmalloc preloaded do the same. Blocks above
glibc's largest mmap threshold (32 MiB: at the paper's size the 32k x 512 embedding and every gradient of it) would
still get a fresh mmap each time, so mmap is switched off altogether and they come from the heap too: measured at
the paper's size (benchmarks/meta_step.py --phases), the meta objective's pass ran 28 % faster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest threshold, fixed (no dynamic adaptation)
MMAP_MAX = 0  # and no mmap at all: blocks above the threshold come from the heap as well
TRIM_THRESHOLD_BYTES = 2**31 - 1  # hand back only free heap tops above ~2 GiB (mallopt takes a C int)
# The same settings as environment variables, for a subprocess (read by glibc at start-up).
REUSE_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
    "MALLOC_MMAP_MAX_": str(MMAP_MAX),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
}
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when set. Other C libraries (musl, macOS) are
    left as they are, with a log line saying so."""
    library = ctypes.util.find_library("c")
    libc = ctypes.CDLL(library) if library else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        logger.info("CPU allocator left as is: no glibc mallopt in %s", library)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied &= mallopt(_M_MMAP_MAX, MMAP_MAX) == 1
    applied &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return applied


def reuse_freed_memory_when_on(device) -> None:
    """What the recipes call: set the thresholds when training runs on the CPU, and say so in the log."""
    if getattr(device, "type", str(device)) == "cpu" and reuse_freed_memory():
        logger.info("CPU allocator: glibc keeps freed memory for reuse (no mmap, trim threshold %d MiB)",
                    TRIM_THRESHOLD_BYTES >> 20)
