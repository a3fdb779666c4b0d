"""Keep freed memory in the process instead of handing it back to the kernel page by page.

glibc's malloc returns freed memory at the top of its heap to the kernel once more than
``M_TRIM_THRESHOLD`` (128 KiB, adapting upwards) is free, and serves large blocks by ``mmap`` and
``munmap``. A training or sampling loop frees and reallocates the same tensors at every step, so each
step faults every page of them in again: in the embedded default a sampling job spent 8.5 of its 22
seconds in the kernel (3.4 M minor page faults). :func:`keep_freed_memory` raises the trim threshold
and the top pad and fixes the mmap threshold at glibc's largest (32 MiB), so those pages stay mapped:
the same job takes 14 s with 0.15 M faults. The price is that up to ``trim`` bytes of freed memory
stay in the process (docs/performance.md §4).

Environment variables ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``MALLOC_MMAP_THRESHOLD_``
set by the user win: nothing is changed then. Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's upper bound of the mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD_MAX = 32 * 2**20
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory(trim: int = 2**30, top_pad: int = 256 * 2**20) -> bool:
    """Tell glibc's malloc to keep up to ``trim`` bytes of freed memory; True when the settings took.

    Examples
    --------
    >>> isinstance(keep_freed_memory(), bool)
    True
    """
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, trim), (M_TOP_PAD, top_pad)))
