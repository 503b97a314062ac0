"""jrnn's layers as ``flax.linen`` modules: ``jrnn.flax.linen.LSTM(input_size, hidden_size, ...)``.

A module's fields are its spec's constructor arguments (``jrnn.LSTM``'s for ``LSTM``) plus
``param_dtype``, and ``module.spec`` is that spec. Its ``params`` collection holds the spec's
params flat, under ``torch.nn``'s names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...: the keys
of ``jrnn.to_torch``), each drawn as ``spec.init`` draws it. ``module.apply(variables, x, h0,
lengths=..., deterministic=..., **options)`` returns what ``spec.apply`` returns; a spec with
``dropout`` needs ``deterministic=False`` and ``rngs={"dropout": key}`` to train with dropout
between layers, ``deterministic=True`` to run without.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import jrnn.flax
    >>> gru = jrnn.flax.linen.GRU(input_size=3, hidden_size=4, bidirectional=True)
    >>> x = jnp.ones((2, 5, 3))
    >>> variables = gru.init(jax.random.key(0), x)
    >>> sorted(variables["params"])[:2]
    ['bias_hh_l0', 'bias_hh_l0_reverse']
    >>> output, h_n = gru.apply(variables, x)
    >>> output.shape, h_n.shape
    ((2, 5, 8), (2, 2, 4))
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

import jrnn
from jrnn.cells import Carry
from jrnn.flax import _state
from jrnn.nn import Spec


class _Layer(nn.Module):
    """A spec as a linen module; :func:`_layer` makes one per spec type."""

    spec_type: ClassVar[type[Spec]]

    @property
    def spec(self) -> Spec:
        """The spec with this module's fields."""
        fields = dataclasses.fields(self.spec_type)
        return self.spec_type(**{field.name: getattr(self, field.name) for field in fields})

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        h0: Carry | None = None,
        *,
        lengths: jax.Array | None = None,
        deterministic: bool | None = None,
        **options: Any,
    ) -> tuple[jax.Array, Carry]:
        """Run the stack: ``spec.apply`` on this module's params.

        Args:
            x: `(B, T, D)` if ``batch_first`` else `(T, B, D)`; or `(T, D)` unbatched.
            h0: initial state `(layers*dirs, B, H_out)`, for LSTM ``(h0, c0)``; zeros when None.
            lengths: optional `(B,)` valid lengths of a padded batch.
            deterministic: with the spec's ``dropout``: False drops out between layers, with
                keys from the ``dropout`` rng; True does not. Needed only when there is dropout.
            **options: passed to ``spec.apply`` unchanged (``unroll``, ``remat``, ...).

        Returns:
            ``(output, h_n)``, as ``spec.apply`` returns them.
        """
        spec = self.spec
        if spec.dropout and deterministic is None:
            raise ValueError(
                f"deterministic: expected True (no dropout) or False (dropout={spec.dropout} "
                "between layers, with rngs={'dropout': key}) for this spec, got None"
            )

        def param(name: str) -> jax.Array:
            def init(key: jax.Array) -> jax.Array:
                return _state.flatten(spec.init(key, self.param_dtype))[name]

            return self.param(name, init)

        shapes = jax.eval_shape(spec.init, jax.random.key(0))
        params = _state.unflatten(_state.layout(shapes), param)
        key = self.make_rng("dropout") if spec.dropout and not deterministic else None
        return spec.apply(params, x, h0, lengths=lengths, dropout_key=key, **options)


def _layer(spec_type: type[Spec]) -> type[_Layer]:
    """A linen module class whose fields are ``spec_type``'s arguments and ``param_dtype``."""
    fields = dataclasses.fields(spec_type)
    namespace = {
        "__annotations__": {field.name: field.type for field in fields} | {"param_dtype": "Any"},
        **{
            field.name: field.default
            for field in fields
            if field.default is not dataclasses.MISSING
        },
        "param_dtype": jnp.float32,
        "spec_type": spec_type,
        "__module__": __name__,
        "__qualname__": spec_type.__name__,
        "__doc__": f"``jrnn.{spec_type.__name__}`` as a linen module; fields: its arguments and "
        "``param_dtype``.",
    }
    return type(spec_type.__name__, (_Layer,), namespace)


RNN = _layer(jrnn.RNN)
LSTM = _layer(jrnn.LSTM)
GRU = _layer(jrnn.GRU)
Recurrent = _layer(jrnn.Recurrent)
