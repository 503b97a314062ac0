"""Tests for jrnn.malloc: the command restarts itself with glibc's malloc tunables."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from jrnn import malloc

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_tuned_environ_adds_tunables_once():
    assert malloc.tuned_environ({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": malloc.TUNABLES}
    assert malloc.tuned_environ({"GLIBC_TUNABLES": ""}) is None  # the user's choice stands


@glibc
def test_reexec_restarts_the_same_command_line_with_tunables():
    code = (
        "import os, sys; from jrnn import malloc; print('start'); malloc.reexec(); "
        "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code, "a b", "c"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    # printed once before the restart, once after it; the arguments survive unchanged
    assert done.stdout.splitlines() == ["start", "start", f"{malloc.TUNABLES} ['a b', 'c']"]


@glibc
def test_tune_serves_large_blocks_from_the_heap_in_a_running_process():
    # mallinfo2's hblks counts the blocks glibc served with mmap: a 64 MiB block is one of
    # them by default, none once tune() has run
    code = """
import ctypes, sys
from jrnn import malloc
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc.mallinfo2.restype = Info
def mapped():  # whether a new 64 MiB block is one more mmap'ed block
    n = libc.mallinfo2().hblks
    p = libc.malloc(64 << 20)
    n = libc.mallinfo2().hblks - n
    libc.free(p)
    return n
before = mapped()
tuned = malloc.tune()
print(before, tuned, mapped())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, tuned, after = done.stdout.split()
    assert (before, tuned, after) == ("1", "True", "0")
