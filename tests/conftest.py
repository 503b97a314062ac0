"""Test-wide settings: no silent rank promotion (nothing is broadcast by accident), and one torch
thread per test process: the suite runs in two processes (``pytest -n 2``, README), and torch's
OpenMP threads spin at every barrier when there are more threads than cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch when it is first imported

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
