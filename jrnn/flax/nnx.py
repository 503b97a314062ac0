"""jrnn's layers as ``flax.nnx`` modules, and its cells in Flax's cell protocol.

Layers: :class:`RNN`, :class:`LSTM` and :class:`GRU` take the arguments of ``jrnn.RNN`` /
``LSTM`` / ``GRU`` plus ``rngs`` (and ``param_dtype``), hold the spec's params as ``nnx.Param``
attributes named as in ``torch.nn`` (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...: the keys of
``jrnn.to_torch``), and ``module(x, h0, lengths=..., **options)`` returns what
``module.spec.apply(module.params, x, h0, ...)`` returns. With the spec's ``dropout``, a module in
training mode (the default, as for ``nnx.Dropout``; ``module.train()``) drops out between layers
with keys from the ``dropout`` stream of its ``rngs`` (the default stream when there is none);
``module.eval()`` or ``nnx.view(module, deterministic=True)`` turns dropout off.

Cells: :class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell` take ``torch.nn.RNNCell`` /
``LSTMCell`` / ``GRUCell``'s arguments plus ``rngs`` and follow Flax's cell protocol
(``initialize_carry(input_shape, rngs=None)``, ``cell(carry, x) -> (carry, y)``,
``num_feature_axes``), so ``nnx.RNN`` and ``nnx.Bidirectional`` scan them. The carry is jrnn's:
``h``, or ``(h, c)`` for the LSTM (Flax's own LSTM cells carry ``(c, h)``).

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jrnn.flax
    >>> gru = jrnn.flax.GRU(3, 4, num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))
    >>> gru.weight_hh_l1.shape
    (12, 4)
    >>> gru.eval()                                    # no dropout
    >>> output, h_n = nnx.jit(lambda m, x: m(x))(gru, jnp.ones((2, 5, 3)))
    >>> output.shape, h_n.shape
    ((2, 5, 4), (2, 2, 4))
    >>> nnx.RNN(jrnn.flax.GRUCell(3, 4, rngs=nnx.Rngs(0)))(jnp.ones((2, 5, 3))).shape
    (2, 5, 4)
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import jrnn
from jrnn.cells import Carry, Params
from jrnn.flax import _state
from jrnn.nn import Spec
from jrnn.stack import StackParams


def _check_rngs(rngs: Any) -> None:
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs: expected an nnx.Rngs, got {type(rngs).__name__}")


class _Layer(nnx.Module):
    """A spec as an nnx module; a subclass names the spec type, ``spec_type = jrnn.LSTM``."""

    spec_type: ClassVar[type[Spec]]

    def __init__(
        self, *args: Any, rngs: nnx.Rngs, param_dtype: Any = jnp.float32, **kwargs: Any
    ) -> None:
        """Build the spec and draw its params.

        Args:
            *args: the spec's arguments (``input_size, hidden_size, ...``), with ``**kwargs``.
            rngs: its ``params`` stream draws the weights, as ``spec.init`` does; with the
                spec's ``dropout``, its ``dropout`` stream draws the dropout masks.
            param_dtype: the weights' dtype.
            **kwargs: the spec's keyword arguments (``num_layers=2``, ``dropout=0.1``, ...).
        """
        _check_rngs(rngs)
        self.spec = self.spec_type(*args, **kwargs)
        params = self.spec.init(rngs.params(), param_dtype)
        self.layout = _state.layout(params)
        for name, value in _state.flatten(params).items():
            setattr(self, name, nnx.Param(value))
        self.rngs = rngs.dropout.fork() if self.spec.dropout else None
        self.deterministic = False

    @property
    def params(self) -> StackParams:
        """The weights as the spec's params: ``tuple[layer][direction]`` of dicts of arrays."""
        return _state.unflatten(self.layout, lambda name: getattr(self, name)[...])

    def __call__(
        self,
        x: jax.Array,
        h0: Carry | None = None,
        *,
        lengths: jax.Array | None = None,
        **options: Any,
    ) -> tuple[jax.Array, Carry]:
        """Run the stack: ``spec.apply``, with dropout between layers in training mode.

        Args:
            x: `(B, T, D)` if ``batch_first`` else `(T, B, D)`; or `(T, D)` unbatched.
            h0: initial state `(layers*dirs, B, H_out)`, for LSTM ``(h0, c0)``; zeros when None.
            lengths: optional `(B,)` valid lengths of a padded batch.
            **options: passed to ``spec.apply`` unchanged (``unroll``, ``remat``, ...).

        Returns:
            ``(output, h_n)``, as ``spec.apply`` returns them.
        """
        training = self.spec.dropout > 0 and not self.deterministic
        key = self.rngs() if training else None
        return self.spec.apply(self.params, x, h0, lengths=lengths, dropout_key=key, **options)

    def set_view(self, deterministic: bool | None = None) -> None:
        """For ``nnx.view``: ``deterministic=True`` turns dropout off, False turns it on.

        Args:
          deterministic: if True, no dropout between layers.
        """  # the arguments indented by two spaces, as nnx.view_info reads them
        if deterministic is not None:
            self.deterministic = deterministic


class RNN(_Layer):
    """``jrnn.RNN`` as an nnx module: ``RNN(input_size, hidden_size, ..., *, rngs)``."""

    spec_type = jrnn.RNN


class LSTM(_Layer):
    """``jrnn.LSTM`` as an nnx module: ``LSTM(input_size, hidden_size, ..., *, rngs)``."""

    spec_type = jrnn.LSTM


class GRU(_Layer):
    """``jrnn.GRU`` as an nnx module: ``GRU(input_size, hidden_size, ..., *, rngs)``."""

    spec_type = jrnn.GRU


class Recurrent(_Layer):
    """``jrnn.Recurrent`` as an nnx module: ``Recurrent(cell, input_size, hidden_size, ...)``."""

    spec_type = jrnn.Recurrent


class _Cell(nnx.Module):
    """One direction of a one-layer spec, stepped by Flax's ``nnx.RNN``."""

    def __init__(self, spec: Spec, *, rngs: nnx.Rngs, param_dtype: Any) -> None:
        _check_rngs(rngs)
        self.cell = spec.cell
        self.input_size = spec.input_size
        ((params,),) = spec.init(rngs.params(), param_dtype)
        self.names = tuple(params)
        for name, value in params.items():
            setattr(self, name, nnx.Param(value))

    @property
    def params(self) -> Params:
        """The weights as cell params (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``)."""
        return {name: getattr(self, name)[...] for name in self.names}

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None) -> Carry:
        """The zero carry for inputs of shape `(*batch, D)` (``rngs``: Flax's protocol; unused).

        Returns:
            ``h`` `(*batch, H)`, or for the LSTM ``(h, c)``.
        """
        params = self.params
        return self.cell.zero_carry(params, tuple(input_shape[:-1]), params["weight_hh"].dtype)

    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One step on `x (*batch, D)`: ``(carry, x) -> (carry, h)``."""
        if jnp.shape(x)[-1:] != (self.input_size,):
            raise ValueError(
                f"x: expected last axis of size input_size={self.input_size}, "
                f"got shape {jnp.shape(x)}"
            )
        return self.cell.step(self.params, carry, x)

    @property
    def num_feature_axes(self) -> int:
        """Flax's protocol: the number of trailing feature axes of ``x`` (one)."""
        return 1


class RNNCell(_Cell):
    """An Elman cell with ``torch.nn.RNNCell``'s arguments; the carry is ``h``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ) -> None:
        spec = jrnn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, bias=bias)
        super().__init__(spec, rngs=rngs, param_dtype=param_dtype)


class LSTMCell(_Cell):
    """An LSTM cell with ``torch.nn.LSTMCell``'s arguments; the carry is ``(h, c)``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ) -> None:
        spec = jrnn.LSTM(input_size, hidden_size, bias=bias)
        super().__init__(spec, rngs=rngs, param_dtype=param_dtype)


class GRUCell(_Cell):
    """A GRU cell with ``torch.nn.GRUCell``'s arguments; the carry is ``h``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ) -> None:
        spec = jrnn.GRU(input_size, hidden_size, bias=bias)
        super().__init__(spec, rngs=rngs, param_dtype=param_dtype)
