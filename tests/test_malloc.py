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
