"""PyTorch interop: ``torch.nn.RNN/LSTM/GRU`` <-> jrnn spec and params.

Parameter names and layouts are already PyTorch's, so conversion is renaming: layer ``l``,
direction ``d`` of a stack maps to ``{name}_l{l}`` (``{name}_l{l}_reverse`` for ``d = 1``).
torch is never imported here: ``from_torch`` reads the module it is given, ``to_torch`` returns
numpy arrays for ``module.load_state_dict({k: torch.from_numpy(v) ...})``.

Example:
    >>> import jax
    >>> import jrnn
    >>> spec = jrnn.GRU(3, 4, bidirectional=True)
    >>> sorted(jrnn.to_torch(spec, spec.init(jax.random.key(0))))[:3]
    ['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0']
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jrnn.nn import GRU, LSTM, RNN, Spec

_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def state_name(name: str, layer: int, direction: int) -> str:
    """PyTorch's state_dict name of one parameter: ``weight_ih_l0``, ``bias_hh_l1_reverse``."""
    return f"{name}_l{layer}" + ("_reverse" if direction else "")


def from_torch(module: Any) -> tuple[Spec, tuple]:
    """Spec and params equal to a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` module.

    Every constructor option is carried over, ``batch_first`` included (note that PyTorch's
    default is ``batch_first=False``, jrnn's is True: the converted spec keeps the module's).

    Args:
        module: an instance of ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU``.

    Returns:
        ``(spec, params)``; params keep the module's floating dtype.
    """
    mode = getattr(module, "mode", None)
    if mode not in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
        raise TypeError(
            f"module: expected a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}"
        )
    common = dict(
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=float(module.dropout),
        bidirectional=module.bidirectional,
    )
    if mode == "LSTM":
        spec = LSTM(**common, proj_size=module.proj_size)
    elif mode == "GRU":
        spec = GRU(**common)
    else:
        spec = RNN(**common, nonlinearity="tanh" if mode == "RNN_TANH" else "relu")
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    params = tuple(
        tuple(
            {
                name: jnp.asarray(state[state_name(name, layer, direction)])
                for name in _NAMES
                if state_name(name, layer, direction) in state
            }
            for direction in range(spec.num_directions)
        )
        for layer in range(spec.num_layers)
    )
    return spec, params


def to_torch(spec: Spec, tree: Any) -> dict[str, np.ndarray]:
    """Name the leaves of a params-shaped tree (params or their gradients) as PyTorch does.

    Args:
        spec: the spec the tree belongs to.
        tree: params, or any tree with their structure (for example ``jax.grad``'s result).

    Returns:
        ``{state_dict name: numpy array}``.
    """
    if len(tree) != spec.num_layers or any(len(layer) != spec.num_directions for layer in tree):
        raise ValueError(
            f"tree: expected {spec.num_layers} layers of {spec.num_directions} direction(s), "
            f"got {[len(layer) for layer in tree]}"
        )
    return {
        state_name(name, layer, direction): np.asarray(value)
        for layer, directions in enumerate(tree)
        for direction, params in enumerate(directions)
        for name, value in params.items()
    }
