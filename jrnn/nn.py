"""``jrnn.RNN``, ``jrnn.LSTM`` and ``jrnn.GRU``: PyTorch-shaped specs over pure functions.

A spec is an immutable, hashable description (the constructor arguments of ``torch.nn.RNN`` /
``LSTM`` / ``GRU``, with ``batch_first=True`` by default). It holds no weights: ``spec.init(key)``
returns params and ``spec.apply(params, x, h0)`` runs the stack. Shapes are PyTorch's:

- ``x``: `(B, T, D)` when ``batch_first`` (else `(T, B, D)`), or `(T, D)` unbatched;
- ``output``: `(B, T, dirs*H_out)` (same layout as ``x``);
- ``h_n``: `(layers*dirs, B, H_out)`; for LSTM ``(h_n, c_n)`` with ``c_n`` `(layers*dirs, B, H)`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import jrnn
    >>> lstm = jrnn.LSTM(8, 16, num_layers=2, bidirectional=True)
    >>> params = lstm.init(jax.random.key(0))
    >>> output, (h_n, c_n) = lstm.apply(params, jnp.zeros((4, 10, 8)))
    >>> output.shape, h_n.shape, c_n.shape
    ((4, 10, 32), (4, 4, 16), (4, 4, 16))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import cells, stack
from jrnn.cells import Carry, Cell
from jrnn.stack import StackParams


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _check_matmul_dtype(matmul_dtype: Any) -> None:
    try:
        floating = jnp.issubdtype(matmul_dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(
            f"matmul_dtype: expected a floating-point dtype or None, got {matmul_dtype!r}"
        )


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


class _Stack:
    """Shared behaviour of the specs; subclasses are frozen dataclasses."""

    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int

    @property
    def cell(self) -> Cell:
        raise NotImplementedError

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """``H_out``: the projection size for a projected LSTM, else the hidden size."""
        return self.proj_size or self.hidden_size

    def __post_init__(self) -> None:
        _positive_int("input_size", self.input_size)
        _positive_int("hidden_size", self.hidden_size)
        _positive_int("num_layers", self.num_layers)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise TypeError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.proj_size, bool) or not isinstance(self.proj_size, int):
            raise TypeError(f"proj_size: expected an integer, got {self.proj_size!r}")
        if self.proj_size and not self.cell.has_cell_state:
            raise ValueError(
                f"proj_size: only LSTM supports a projection, got proj_size={self.proj_size} "
                f"for {type(self).__name__}"
            )
        if not 0 <= self.proj_size < self.hidden_size:
            raise ValueError(
                f"proj_size: expected 0 <= proj_size < hidden_size={self.hidden_size}, "
                f"got {self.proj_size}"
            )

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> StackParams:
        """Fresh params, every entry drawn from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        return stack.init(
            key,
            self.cell,
            self.input_size,
            self.hidden_size,
            directions=(self.num_directions,) * self.num_layers,
            bias=self.bias,
            proj_size=self.proj_size,
            dtype=dtype,
        )

    def apply(
        self,
        params: StackParams,
        x: jax.Array,
        h0: Carry | None = None,
        *,
        lengths: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        unroll: int | bool | None = None,
        remat: int | None = None,
        matmul_dtype: Any = None,
        kernel: bool | None = None,
    ) -> tuple[jax.Array, Carry]:
        """Run the stack.

        Args:
            params: from :meth:`init` (or :func:`jrnn.from_torch`).
            x: `(B, T, D)` if ``batch_first`` else `(T, B, D)`; or `(T, D)` unbatched.
            h0: initial state `(layers*dirs, B, H_out)` (`(layers*dirs, H_out)` unbatched); for
                LSTM a tuple ``(h0, c0)`` with ``c0`` `(layers*dirs, B, H)`. Zeros when None.
            lengths: optional `(B,)` integer lengths in ``[1, T]``: steps past a sequence's end
                are padding, as with PyTorch's packed sequences.
            dropout_key: a PRNG key turns on dropout between layers (training); None for none.
            unroll: scan unrolling, a speed knob that does not change the result; None picks
                one per backend (:func:`jrnn.sequence.default_unroll`: 16 on GPU, else 1).
            remat: for long sequences: recompute activations in chunks of ``remat`` steps
                during the backward pass, so memory grows as ``T / remat + remat`` rather than
                ``T`` (``remat`` near ``sqrt(T)`` is best); the result is unchanged.
            matmul_dtype: mixed precision: round the operands of every matmul to this dtype
                (``jnp.bfloat16`` uses the bf16 matrix units of recent CPUs and GPUs) while
                products, gates and states stay in ``x``'s dtype. None (default): exact.
            kernel: the loop over time in compiled C++ (:mod:`jrnn.kernel`; CPU, float32, no
                projection): None (default) uses it wherever it applies, True insists (an error
                says why it cannot), False runs the pure-JAX scan. Same numbers up to float
                rounding; the compiled path has reverse-mode derivatives only, so
                ``jax.jvp`` / ``jax.jacfwd`` need ``kernel=False``.

        Returns:
            ``(output, h_n)``; ``output`` is `(B, T, dirs*H_out)` in the layout of ``x``.
        """
        self._check_params(params)
        if remat is not None:
            _positive_int("remat", remat)
        if matmul_dtype is not None:
            _check_matmul_dtype(matmul_dtype)
        x = self._check_x(x)
        batched = x.ndim == 3
        xs = jnp.swapaxes(x, 0, 1) if batched and self.batch_first else x
        batch_shape = xs.shape[1:-1]
        if h0 is not None:
            self._check_h0(h0, batch_shape, x.dtype)
        if lengths is not None:
            lengths = self._check_lengths(lengths, batched, batch_shape, xs.shape[0])
        ys, h_n = stack.apply(
            self.cell,
            params,
            xs,
            h0,
            lengths=lengths,
            dropout_rate=self.dropout,
            dropout_key=dropout_key,
            unroll=unroll,
            remat=remat,
            matmul_dtype=matmul_dtype,
            kernel=kernel,
        )
        return (jnp.swapaxes(ys, 0, 1) if batched and self.batch_first else ys), h_n

    # -- validation at trace time ---------------------------------------------------------------

    def _check_params(self, params: Any) -> None:
        ok = (
            isinstance(params, tuple | list)
            and len(params) == self.num_layers
            and all(isinstance(layer, tuple | list) for layer in params)
            and all(len(layer) == self.num_directions for layer in params)
        )
        if not ok:
            raise ValueError(
                f"params: expected {self.num_layers} layers of {self.num_directions} direction(s) "
                f"each, as returned by {type(self).__name__}.init; got {jax.tree.structure(params)}"
            )
        expected = (self.cell.gates * self.hidden_size, self.input_size)
        got = tuple(jnp.shape(params[0][0]["weight_ih"]))
        if got != expected:
            raise ValueError(f"params: expected layer 0 weight_ih of shape {expected}, got {got}")

    def _check_x(self, x: Any) -> jax.Array:
        x = jnp.asarray(x)
        layout = "(batch, time, features)" if self.batch_first else "(time, batch, features)"
        if x.ndim not in (2, 3):
            raise ValueError(
                f"x: expected a 3-D {layout} array or a 2-D (time, features) array, "
                f"got shape {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"x: expected last axis of size input_size={self.input_size}, got shape {x.shape}"
            )
        time_axis = 1 if x.ndim == 3 and self.batch_first else 0
        if x.shape[time_axis] < 1:
            raise ValueError(f"x: expected at least one time step, got shape {x.shape}")
        return x

    def _check_h0(self, h0: Any, batch_shape: tuple[int, ...], dtype: Any) -> None:
        states = self.num_layers * self.num_directions
        expected = {"h0": (states, *batch_shape, self.output_size)}
        if self.cell.has_cell_state:
            if not (isinstance(h0, tuple | list) and len(h0) == 2):
                raise TypeError(f"h0: expected a tuple (h0, c0) for LSTM, got {type(h0).__name__}")
            expected["c0"] = (states, *batch_shape, self.hidden_size)
            given = dict(zip(("h0", "c0"), h0, strict=True))
        else:
            given = {"h0": h0}
        for name, shape in expected.items():
            value = given[name]
            if tuple(jnp.shape(value)) != shape:
                raise ValueError(
                    f"{name}: expected shape {shape} (layers*directions, batch, size), "
                    f"got {tuple(jnp.shape(value))}"
                )
            if jnp.result_type(value) != dtype:
                raise TypeError(
                    f"{name}: expected dtype {dtype} like x, got {jnp.result_type(value)}"
                )

    def _check_lengths(
        self, lengths: Any, batched: bool, batch_shape: tuple[int, ...], steps: int
    ) -> jax.Array:
        if not batched:
            raise ValueError("lengths: only batched input takes lengths; got a 2-D x")
        if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
            raise TypeError(
                f"lengths: expected an integer array, got dtype {jnp.result_type(lengths)}"
            )
        if tuple(jnp.shape(lengths)) != batch_shape:
            raise ValueError(
                f"lengths: expected shape {batch_shape} (batch,), got {tuple(jnp.shape(lengths))}"
            )
        if _is_concrete(lengths):
            concrete = np.asarray(lengths)
            low, high = int(concrete.min()), int(concrete.max())
            if low < 1 or high > steps:
                raise ValueError(
                    f"lengths: expected values in [1, {steps}] (the number of time steps), "
                    f"got min {low} and max {high}"
                )
        return jnp.asarray(lengths)


@dataclasses.dataclass(frozen=True)
class RNN(_Stack):
    """Elman RNN stack, ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu)."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0  # PyTorch's argument; only LSTM accepts a non-zero value

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {self.nonlinearity!r}")

    @property
    def cell(self) -> Cell:
        return cells.RNN_TANH if self.nonlinearity == "tanh" else cells.RNN_RELU


@dataclasses.dataclass(frozen=True)
class LSTM(_Stack):
    """LSTM stack; with ``proj_size > 0`` the hidden state is projected to ``proj_size``."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def cell(self) -> Cell:
        return cells.LSTM


@dataclasses.dataclass(frozen=True)
class GRU(_Stack):
    """GRU stack, PyTorch's formulation (``b_hn`` inside ``r * (W_hn h + b_hn)``)."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0  # PyTorch's argument; only LSTM accepts a non-zero value

    @property
    def cell(self) -> Cell:
        return cells.GRU


Spec = RNN | LSTM | GRU
