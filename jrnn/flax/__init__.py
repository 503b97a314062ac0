"""jrnn in Flax: its layers as ``flax.nnx`` and ``flax.linen`` modules, Flax's cells converted.

flax is imported only here (``pip install 'jrnn[flax]'``); ``import jrnn`` works without it.

- ``jrnn.flax.RNN`` / ``LSTM`` / ``GRU``: nnx modules over the specs; ``jrnn.flax.RNNCell`` /
  ``LSTMCell`` / ``GRUCell``: cells for ``nnx.RNN`` and ``nnx.Bidirectional``
  (:mod:`jrnn.flax.nnx`).
- ``jrnn.flax.linen.RNN`` / ``LSTM`` / ``GRU``: the same layers as linen modules
  (:mod:`jrnn.flax.linen`).
- ``from_flax(module, variables=None) -> (spec, params)`` for Flax's own ``LSTMCell``,
  ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell``, bare or in ``RNN`` / ``Bidirectional``,
  and ``to_flax(spec, params)`` back to an nnx module (:mod:`jrnn.flax.convert`).

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jrnn.flax
    >>> flax_rnn = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
    >>> spec, params = jrnn.flax.from_flax(flax_rnn)
    >>> x = jnp.ones((2, 5, 3))
    >>> bool(jnp.allclose(spec.apply(params, x)[0], flax_rnn(x), atol=1e-5))
    True
"""

try:
    import flax  # noqa: F401
except ImportError as error:
    raise ImportError("jrnn.flax needs flax: pip install 'jrnn[flax]'") from error

from jrnn.flax import convert, linen
from jrnn.flax.convert import from_flax, to_flax
from jrnn.flax.nnx import GRU, LSTM, RNN, GRUCell, LSTMCell, Recurrent, RNNCell

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "Recurrent",
    "convert",
    "from_flax",
    "linen",
    "to_flax",
]
