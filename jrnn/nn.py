"""``jrnn.RNN``, ``jrnn.LSTM``, ``jrnn.GRU``, ``jrnn.Recurrent`` and the linear cells'
``jrnn.MinGRU``, ``jrnn.MinLSTM``, ``jrnn.LRU``: PyTorch-shaped specs.

A spec is an immutable, hashable description (the constructor arguments of ``torch.nn.RNN`` /
``LSTM`` / ``GRU``, with ``batch_first=True`` by default; ``Recurrent`` takes any
:class:`jrnn.cells.Cell` first). It holds no weights: ``spec.init(key)`` returns params and
``spec.apply(params, x, h0)`` runs the stack. Shapes are PyTorch's:

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
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import cells, stack
from jrnn.cells import Carry, Cell
from jrnn.methods import Options
from jrnn.stack import StackParams


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _named_leaves(tree: Any) -> dict[str, Any]:
    """The leaves of a params pytree by name: ``weight_ih`` for a dict key, else the path."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="."): leaf for path, leaf in flat}


@functools.cache
def _init_shapes(spec: Any) -> Any:
    return jax.eval_shape(spec.init, jax.random.key(0))


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
    cell: Cell  # a property of RNN, LSTM and GRU; a field of Recurrent

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
        if self.proj_size and len(self.cell.carry_names) < 2:
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
        """Fresh params from the cell's init (for RNN, LSTM and GRU every entry drawn from
        U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)))."""
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
        **options: Any,
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
            **options: how the layers run, the fields of :class:`jrnn.methods.Options`:
                ``method`` (``"auto"``, ``"scan"``, ``"compiled"``, ``"associative"``,
                ``"deer"``, ``"quasi-deer"``, ``"elk"``), ``unroll``, ``remat``,
                ``matmul_dtype``, ``solver``.

        Returns:
            ``(output, h_n)``; ``output`` is `(B, T, dirs*H_out)` in the layout of ``x``.
        """
        self._check_params(params)
        Options.of(options)  # checked here, passed down as keywords
        x = self._check_x(x)
        batched = x.ndim == 3
        xs = jnp.swapaxes(x, 0, 1) if batched and self.batch_first else x
        batch_shape = xs.shape[1:-1]
        if h0 is not None:
            self._check_h0(params, h0, batch_shape, x.dtype)
        if lengths is not None:
            lengths = self._check_lengths(lengths, batched, batch_shape, xs.shape[0])
        ys, h_n = stack.apply(
            self.cell, params, xs, h0, lengths=lengths, dropout_rate=self.dropout,
            dropout_key=dropout_key, **options,
        )  # fmt: skip
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
        expected = _init_shapes(self)
        for index, (want_layer, layer) in enumerate(zip(expected, params, strict=True)):
            want, got = _named_leaves(want_layer[0]), _named_leaves(layer[0])
            if list(want) != list(got):
                raise ValueError(
                    f"params: expected layer {index} params named {list(want)}, got {list(got)}"
                )
            for name, leaf in want.items():
                if tuple(jnp.shape(got[name])) != leaf.shape:
                    raise ValueError(
                        f"params: expected layer {index} {name} of shape {leaf.shape}, "
                        f"got {tuple(jnp.shape(got[name]))}"
                    )

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

    def _check_h0(self, params: Any, h0: Any, batch_shape: tuple[int, ...], dtype: Any) -> None:
        state = jax.eval_shape(lambda: stack.zero_state(self.cell, params, batch_shape, dtype))
        names = tuple(f"{n}0" for n in self.cell.carry_names)
        leaves = jax.tree.leaves(state)
        if len(leaves) > 1:
            if not (isinstance(h0, tuple | list) and len(h0) == len(leaves)):
                raise TypeError(
                    f"h0: expected a tuple ({', '.join(names)}) for {type(self).__name__}, "
                    f"got {type(h0).__name__}"
                )
            given = list(h0)
        else:
            given = [h0]
        for name, want, value in zip(names, leaves, given, strict=True):
            if tuple(jnp.shape(value)) != want.shape:
                raise ValueError(
                    f"{name}: expected shape {want.shape} (layers*directions, batch, size), "
                    f"got {tuple(jnp.shape(value))}"
                )
            if jnp.result_type(value) != want.dtype:
                raise TypeError(
                    f"{name}: expected dtype {want.dtype} like x, got {jnp.result_type(value)}"
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


@dataclasses.dataclass(frozen=True)
class Recurrent(_Stack):
    """A stack of any :class:`jrnn.cells.Cell`, with the arguments and shapes of the others.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jrnn
        >>> sin = jrnn.cells.gated("SIN", 1, lambda gx, gh, h, c: (jnp.sin(gx + gh), None))
        >>> spec = jrnn.Recurrent(sin, 3, 5, num_layers=2, bidirectional=True)
        >>> out, h_n = spec.apply(spec.init(jax.random.key(0)), jnp.ones((2, 7, 3)))
        >>> out.shape, h_n.shape
        ((2, 7, 10), (4, 2, 5))
    """

    cell: Cell
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cell, Cell):
            raise TypeError(f"cell: expected a jrnn.cells.Cell, got {type(self.cell).__name__}")
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class MinGRU(_Stack):
    """minGRU stack (Feng et al. 2024; :mod:`jrnn.cells.minimal`): ``z = sigmoid(a_z)``,
    ``h_t = (1 - z) * h_{t-1} + z * g(a_h)`` with ``[a_z; a_h] = x_t @ weight_ih.T + bias_ih``.

    Params per layer and direction: ``weight_ih (2H, D)`` rows ``[z; h~]``, ``bias_ih (2H,)``,
    drawn from U(-1/sqrt(D), 1/sqrt(D)). ``method="associative"`` runs each layer by
    ``jax.lax.associative_scan`` in log space, ``method="scan"`` step by step: the same numbers.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jrnn
        >>> spec = jrnn.MinGRU(3, 8, num_layers=2, bidirectional=True)
        >>> params = spec.init(jax.random.key(0))
        >>> x = jax.random.normal(jax.random.key(1), (4, 50, 3))
        >>> out, h_n = spec.apply(params, x, method="associative")
        >>> out.shape, h_n.shape
        ((4, 50, 16), (4, 4, 8))
        >>> bool(jnp.allclose(out, spec.apply(params, x, method="scan")[0], atol=1e-5))
        True
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size = 0  # not a field: no projection

    @property
    def cell(self) -> Cell:
        return cells.MIN_GRU


@dataclasses.dataclass(frozen=True)
class MinLSTM(_Stack):
    """minLSTM stack (Feng et al. 2024; :mod:`jrnn.cells.minimal`): ``f' = f / (f + i)``,
    ``i' = i / (f + i)`` with ``f = sigmoid(a_f)``, ``i = sigmoid(a_i)``, and
    ``h_t = f' * h_{t-1} + i' * g(a_h)``; the carry is ``h`` alone.

    Params per layer and direction: ``weight_ih (3H, D)`` rows ``[f; i; h~]``, ``bias_ih (3H,)``,
    drawn from U(-1/sqrt(D), 1/sqrt(D)). Methods as for :class:`MinGRU`.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size = 0  # not a field: no projection

    @property
    def cell(self) -> Cell:
        return cells.MIN_LSTM


@dataclasses.dataclass(frozen=True)
class LRU(_Stack):
    """Linear Recurrent Unit stack (Orvieto et al. 2023; :mod:`jrnn.cells.lru`).

    Each layer and direction maps its input `(..., D_l)` to an output of the same size through a
    complex diagonal state of ``state_size`` ``N``: ``x_t = lam * x_{t-1} + gamma * (B u_t)``,
    ``y_t = Re(C x_t) + D * u_t``. A bidirectional layer concatenates its two directions, and
    the next layer takes that as its input: the output is `(B, T, dirs**num_layers * D)`.
    ``h0`` and ``h_n`` are the complex states `(layers*dirs, B, N)` (complex64 for float32 ``x``).
    ``init`` draws ``|lam|`` on the ring ``[r_min, r_max]`` and its phase in ``[0, max_phase]``.
    ``method="associative"`` runs each layer by ``jax.lax.associative_scan`` over ``(lam, b)``
    pairs, ``method="scan"`` step by step: the same numbers.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jrnn
        >>> spec = jrnn.LRU(3, 16, num_layers=2, r_min=0.9)
        >>> params = spec.init(jax.random.key(0))
        >>> out, h_n = spec.apply(params, jnp.ones((4, 50, 3)), method="associative")
        >>> out.shape, out.dtype, h_n.shape, h_n.dtype
        ((4, 50, 3), dtype('float32'), (2, 4, 16), dtype('complex64'))
    """

    input_size: int
    state_size: int
    num_layers: int = 1
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi
    bias = False  # not a field: the LRU has no bias parameters
    proj_size = 0  # not a field: no projection

    def __post_init__(self) -> None:
        _positive_int("state_size", self.state_size)
        cells.lru(self.r_min, self.r_max, self.max_phase)  # checks 0 <= r_min < r_max <= 1
        super().__post_init__()

    @property
    def hidden_size(self) -> int:
        """The state size ``N``, what the other specs call the hidden size."""
        return self.state_size

    @property
    def output_size(self) -> int:
        """The output size of each direction of the last layer, ``dirs**(layers-1) * D``."""
        return self.num_directions ** (self.num_layers - 1) * self.input_size

    @property
    def cell(self) -> Cell:
        return cells.lru(self.r_min, self.r_max, self.max_phase)


Spec = RNN | LSTM | GRU | Recurrent | MinGRU | MinLSTM | LRU
