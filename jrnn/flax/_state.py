"""How ``jrnn.flax`` modules hold stack params: flat, one weight per PyTorch state_dict name.

A spec's params are ``tuple[layer][direction]`` of dicts (``weight_ih``, ...). The modules store
each weight under its ``torch.nn`` name (``weight_ih_l0``, ``bias_hh_l1_reverse``), which Flax's
state trees, optimizers and checkpoints handle as a flat mapping, and rebuild the tuple for
``spec.apply`` from a :data:`Layout`: the parameter names of every layer direction.

Example:
    >>> import jax
    >>> import jrnn
    >>> from jrnn.flax import _state
    >>> params = jrnn.GRU(3, 4, bidirectional=True).init(jax.random.key(0))
    >>> sorted(_state.flatten(params))[:3]
    ['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0']
    >>> rebuilt = _state.unflatten(_state.layout(params), _state.flatten(params).__getitem__)
    >>> jax.tree.structure(rebuilt) == jax.tree.structure(params)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jrnn.interop import state_name

Layout = tuple[tuple[tuple[str, ...], ...], ...]  # names of each [layer][direction]'s params


def layout(params: Any) -> Layout:
    """The parameter names of every layer direction of a params-shaped tree (hashable)."""
    return tuple(tuple(tuple(direction) for direction in layer) for layer in params)


def flatten(params: Any) -> dict[str, Any]:
    """``{state_dict name: leaf}`` for a params-shaped tree."""
    return {
        state_name(name, layer, direction): value
        for layer, directions in enumerate(params)
        for direction, named in enumerate(directions)
        for name, value in named.items()
    }


def unflatten(names: Layout, lookup: Callable[[str], Any]) -> tuple:
    """The ``tuple[layer][direction]`` of dicts with ``lookup(state_dict name)`` as leaves."""
    return tuple(
        tuple(
            {name: lookup(state_name(name, layer, direction)) for name in direction_names}
            for direction, direction_names in enumerate(directions)
        )
        for layer, directions in enumerate(names)
    )
