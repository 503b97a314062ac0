"""Keep XLA:CPU's per-step temporaries mapped: glibc malloc settings for training processes.

XLA:CPU allocates one temporary buffer per executable run (826 MB for the train step of a
2-layer LSTM-512 on batch 64 x 128). glibc serves a block that large with ``mmap`` and gives it
back with ``munmap``, so every step faults the whole buffer in again, 4 KiB at a time: on a
2-core CPU, 200,000 minor page faults and about half a second of kernel time per step.
:data:`TUNABLES` keeps freed memory in the process (no ``mmap`` for large blocks, no trimming)
and backs it with transparent huge pages.

glibc reads ``GLIBC_TUNABLES`` only when a process starts, so :func:`reexec` restarts the
current command with it set; the ``jrnn`` command calls it first thing (and
``python -m benchmarks.run --tuned-malloc``). A script or notebook of your own can instead call
:func:`tune` first thing: it sets the two settings that matter, no ``mmap`` and no trimming, in
the running process through ``mallopt`` (all but the huge pages; see the README's speed section
for what each gives). Or start Python with the variable set::

    export GLIBC_TUNABLES=$(python -c "import jrnn.malloc as m; print(m.TUNABLES)")
    jupyter lab

A ``GLIBC_TUNABLES`` already in the environment (even empty) is left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = (
    "glibc.malloc.hugetlb=1"  # transparent huge pages for the heap
    ":glibc.malloc.mmap_max=0"  # serve large blocks from the heap too, so they are reused
    ":glibc.malloc.trim_threshold=68719476736"  # never hand freed heap back to the kernel
)


def tuned_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` plus ``GLIBC_TUNABLES``; None when it is already set or libc is not glibc."""
    if "GLIBC_TUNABLES" in environ or platform.libc_ver()[0] != "glibc":
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES}


def reexec() -> None:
    """Restart this process's command line with :data:`TUNABLES` (no-op when not needed)."""
    environ = tuned_environ(os.environ)
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, environ)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1  # mallopt takes an int: 2 GiB is the highest trim threshold it can set


def tune() -> bool:
    """Set glibc malloc's ``mmap_max=0`` and the highest trim threshold in this process.

    The part of :data:`TUNABLES` that a running process can still change (``mallopt``); call it
    before the first large allocation, e.g. at the top of a notebook. Blocks that were served
    with ``mmap`` before the call stay so until freed.

    Returns:
        True when both settings took effect; False when libc is not glibc (nothing changed).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
