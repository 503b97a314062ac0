"""jrnn: recurrent neural networks in JAX, as pure functions with PyTorch's numerics."""

from typing import Any

from jrnn import cells, diagnostics, methods, stack
from jrnn.cells import Cell
from jrnn.interop import from_torch, to_torch
from jrnn.methods import Options
from jrnn.methods.scan import scan
from jrnn.nn import GRU, LRU, LSTM, RNN, MinGRU, MinLSTM, Recurrent

__version__ = "0.1.0"


def from_flax(module: Any, variables: Any = None) -> tuple[Any, Any]:
    """``(spec, params)`` of a Flax recurrent cell or layer; see :func:`jrnn.flax.convert.from_flax`
    (needs ``pip install "jrnn[flax]"``)."""
    from jrnn.flax.convert import from_flax as convert

    return convert(module, variables)


def to_flax(spec: Any, params: Any) -> Any:
    """A Flax module holding ``params``; see :func:`jrnn.flax.convert.to_flax`."""
    from jrnn.flax.convert import to_flax as convert

    return convert(spec, params)


__all__ = [
    "GRU",
    "LRU",
    "LSTM",
    "RNN",
    "Cell",
    "MinGRU",
    "MinLSTM",
    "Options",
    "Recurrent",
    "cells",
    "diagnostics",
    "from_flax",
    "from_torch",
    "methods",
    "scan",
    "stack",
    "to_flax",
    "to_torch",
]
