"""jrnn: recurrent neural networks in JAX, as pure functions with PyTorch's numerics."""

from jrnn import cells, diagnostics, kernel, sequence, stack
from jrnn.interop import from_torch, to_torch
from jrnn.nn import GRU, LSTM, RNN
from jrnn.sequence import scan

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "cells",
    "diagnostics",
    "from_torch",
    "kernel",
    "scan",
    "sequence",
    "stack",
    "to_torch",
]
