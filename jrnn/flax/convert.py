"""Flax's own recurrent cells <-> jrnn specs and params, exactly.

:func:`from_flax` reads ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell``,
bare or inside ``RNN`` / ``Bidirectional``, from ``flax.nnx`` (the module holds its params) or
``flax.linen`` (with the module's ``variables``). Flax keeps one ``Dense`` kernel `(in, out)` per
gate block, or one for all blocks, in jrnn's gate order (i, f, g, o; r, z, n); jrnn's
``weight_ih`` `(G*H, D)` and ``weight_hh`` `(G*H, H)` are their concatenation, transposed. Flax
gives each gate block one bias, where jrnn (like PyTorch) has ``bias_ih`` and ``bias_hh``; the
bias Flax does not have is zero in jrnn, which is exact:

- ``LSTMCell``, ``OptimizedLSTMCell`` -> ``jrnn.LSTM``: biases on the hidden side, ``bias_ih``
  is zero.
- ``nnx.GRUCell`` -> ``jrnn.GRU``: biases on the input side, ``bias_hh`` is zero (nnx's GRU has
  no ``b_hn``).
- ``linen.GRUCell`` -> ``jrnn.GRU``: biases on the input side, and ``b_hn`` inside
  ``r * (W_hn h + b_hn)`` as in PyTorch; ``b_hr`` and ``b_hz`` are zero.
- ``SimpleCell`` with ``tanh`` or ``relu`` -> ``jrnn.RNN``: biases on the input side,
  ``bias_hh`` is zero.

A bare cell converts to the layer ``RNN(cell)`` would run (batch first). ``time_major=True``
gives ``batch_first=False``; ``Bidirectional`` sets its RNNs' ``time_major``, ``reverse`` and
``keep_order`` itself, so theirs are not read. What jrnn cannot express is refused with an error
that names the option: another ``gate_fn`` or ``activation_fn``, ``SimpleCell(residual=True)``,
a computation ``dtype`` other than the params', a non-zero ``carry_init``, a reverse-only ``RNN``,
another ``merge_fn``. Call-time arguments (``nnx.RNN(...)(x, reverse=True)``) are the caller's.

Flax's LSTM carry is ``(c, h)`` with leaves `(B, H)`; jrnn's ``h_n`` is ``(h, c)`` with leaves
`(layers*dirs, B, H)`, and ``Bidirectional``'s carry ``(forward, backward)`` is jrnn's rows 0
and 1. With ``seq_lengths`` Flax leaves its outputs past a sequence's end as they come, jrnn
zeros them; the outputs inside each sequence and the final carries agree.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from jrnn.flax.convert import from_flax, to_flax
    >>> layer = nn.Bidirectional(nn.RNN(nn.GRUCell(4)), nn.RNN(nn.GRUCell(4)))
    >>> x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    >>> variables = layer.init(jax.random.key(1), x)
    >>> spec, params = from_flax(layer, variables)
    >>> spec.hidden_size, spec.bidirectional, spec.batch_first
    (4, True, True)
    >>> bool(jnp.allclose(spec.apply(params, x)[0], layer.apply(variables, x), atol=1e-5))
    True
    >>> type(to_flax(spec, params)).__name__          # Flax's nnx.Bidirectional
    'Bidirectional'
"""

from __future__ import annotations

from typing import Any, NoReturn

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

import jrnn
from jrnn.cells import Params
from jrnn.nn import Spec
from jrnn.stack import StackParams

_LSTM_GATES = (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"))

# Each Flax cell: the jrnn spec it becomes and its Dense layers in jrnn's gate order, input side
# then hidden side (nnx's LSTMCell names its forget-gate layer ``if_``).
_CELLS: dict[type, tuple[type[Spec], tuple[str, ...], tuple[str, ...]]] = {
    nnx.LSTMCell: (jrnn.LSTM, ("ii", "if_", "ig", "io"), _LSTM_GATES[1]),
    nnx.OptimizedLSTMCell: (jrnn.LSTM, ("dense_i",), ("dense_h",)),
    nnx.GRUCell: (jrnn.GRU, ("dense_i",), ("dense_h",)),
    nnx.SimpleCell: (jrnn.RNN, ("dense_i",), ("dense_h",)),
    nn.LSTMCell: (jrnn.LSTM, *_LSTM_GATES),
    nn.OptimizedLSTMCell: (jrnn.LSTM, *_LSTM_GATES),
    nn.GRUCell: (jrnn.GRU, ("ir", "iz", "in"), ("hr", "hz", "hn")),
    nn.SimpleCell: (jrnn.RNN, ("i",), ("h",)),
}
_NONLINEARITIES = {jnp.tanh: "tanh", jax.nn.relu: "relu"}
_RNNS = (nnx.RNN, nn.RNN)
_BIDIRECTIONALS = (nnx.Bidirectional, nn.Bidirectional)


def _name(value: Any) -> str:
    return getattr(value, "__name__", repr(value))


def _qualified(module: Any) -> str:
    """``nnx.LSTMCell`` or ``linen.LSTMCell``, for a module or a module class."""
    cls = module if isinstance(module, type) else type(module)
    return ("nnx." if issubclass(cls, nnx.Module) else "linen.") + cls.__name__


def _refuse(option: str, expected: str, got: Any, cell: Any) -> NoReturn:
    raise ValueError(
        f"{option}: jrnn cannot express this {_qualified(cell)}; expected {expected}, "
        f"got {_name(got)}"
    )


def _check_options(cell: Any, spec_type: type[Spec], dtype: Any) -> None:
    """Refuse every option of a Flax cell that would make it compute something jrnn does not."""
    if getattr(cell, "gate_fn", jax.nn.sigmoid) is not jax.nn.sigmoid:
        _refuse("gate_fn", "jax.nn.sigmoid", cell.gate_fn, cell)
    if spec_type is jrnn.RNN:
        if cell.activation_fn not in _NONLINEARITIES:
            _refuse("activation_fn", "jnp.tanh or jax.nn.relu", cell.activation_fn, cell)
        if cell.residual:
            _refuse("residual", "False", cell.residual, cell)
    elif cell.activation_fn is not jnp.tanh:
        _refuse("activation_fn", "jnp.tanh", cell.activation_fn, cell)
    if cell.dtype is not None and jnp.dtype(cell.dtype) != dtype:
        _refuse("dtype", f"None or {dtype} (the params' dtype)", jnp.dtype(cell.dtype), cell)
    if cell.carry_init not in (None, jax.nn.initializers.zeros):
        _refuse("carry_init", "zeros_init() (jrnn starts from zeros)", cell.carry_init, cell)
    if getattr(cell, "promote_dtype", nnx_dtypes.promote_dtype) is not nnx_dtypes.promote_dtype:
        _refuse("promote_dtype", "flax's promote_dtype", cell.promote_dtype, cell)


def _blocks(tree: Any, denses: tuple[str, ...]) -> tuple[jax.Array, jax.Array]:
    """jrnn's `(G*H, in)` weight and `(G*H,)` bias from Flax's Dense layers (no bias: zeros)."""
    kernels = [jnp.asarray(tree[dense]["kernel"]) for dense in denses]
    biases = [
        jnp.asarray(tree[dense]["bias"]) if "bias" in tree[dense] else jnp.zeros_like(k[0])
        for dense, k in zip(denses, kernels, strict=True)
    ]
    return jnp.concatenate(kernels, axis=1).T, jnp.concatenate(biases)


def _direction(cell: Any, tree: Any, argument: str) -> tuple[type[Spec], dict[str, Any], Params]:
    """The spec type, spec options and params of one Flax cell, given its params ``tree``."""
    if type(cell) not in _CELLS:
        supported = ", ".join(sorted(_qualified(cls) for cls in _CELLS))
        raise TypeError(
            f"module: expected one of {supported}, or an RNN / Bidirectional of them; "
            f"got {type(cell).__module__}.{type(cell).__qualname__}"
        )
    spec_type, inputs, hiddens = _CELLS[type(cell)]
    if tree is None:
        tree = nnx.to_pure_dict(nnx.state(cell, nnx.Param))
    try:
        weight_ih, bias_ih = _blocks(tree, inputs)
        weight_hh, bias_hh = _blocks(tree, hiddens)
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{argument}: expected the params of a {_qualified(cell)} (Dense layers "
            f"{', '.join(inputs + hiddens)}), got {jax.tree.map(jnp.shape, tree)}"
        ) from error
    _check_options(cell, spec_type, weight_hh.dtype)
    options = {}
    if spec_type is jrnn.RNN:
        options["nonlinearity"] = _NONLINEARITIES[cell.activation_fn]
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    return spec_type, options, params


def _subtree(params: Any, key: str, argument: str) -> Any:
    if params is None:
        return None
    try:
        return params[key]
    except (KeyError, TypeError) as error:
        shapes = jax.tree.map(jnp.shape, params)
        raise ValueError(
            f"{argument}: expected params with a {key!r} entry, got {shapes}"
        ) from error


def _rnn_cell(rnn: Any, params: Any, argument: str) -> tuple[Any, Any]:
    if type(rnn) not in _RNNS:
        raise TypeError(
            f"module: expected a Bidirectional of two RNNs, got a {type(rnn).__qualname__} inside"
        )
    return rnn.cell, _subtree(params, "cell", argument)


def _cells(module: Any, params: Any, argument: str) -> tuple[list[tuple[Any, Any]], bool]:
    """The ``(cell, cell params)`` of each direction of ``module``, and its ``time_major``."""
    if type(module) in _BIDIRECTIONALS:
        if module.merge_fn is not type(module).merge_fn:
            _refuse("merge_fn", "its default (concatenation)", module.merge_fn, module)
        rnns = ("forward_rnn", "backward_rnn")
        cells = [
            _rnn_cell(getattr(module, rnn), _subtree(params, rnn, argument), argument)
            for rnn in rnns
        ]
        return cells, module.time_major
    if type(module) in _RNNS:
        if module.reverse:
            _refuse(
                "reverse", "False (a reverse-only layer is half of a Bidirectional)", True, module
            )
        return [_rnn_cell(module, params, argument)], module.time_major
    return [(module, params)], False  # a bare cell: what RNN(cell) runs, batch first


def _check_shapes(spec: Spec, params: Any, argument: str) -> None:
    """``params`` must have the structure and shapes that ``spec.init`` gives."""
    expected = jax.eval_shape(spec.init, jax.random.key(0))
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError(
            f"{argument}: expected params structured like {spec}.init's, "
            f"got {jax.tree.structure(params)}"
        )
    for (path, leaf), want in zip(
        jax.tree.leaves_with_path(params), jax.tree.leaves(expected), strict=True
    ):
        if jnp.shape(leaf) != want.shape:
            raise ValueError(
                f"{argument}: expected {jax.tree_util.keystr(path)} of shape {want.shape} for "
                f"{spec}, got {jnp.shape(leaf)}"
            )


def from_flax(module: Any, variables: Any = None) -> tuple[Spec, StackParams]:
    """The jrnn spec and params that compute what a Flax recurrent module computes.

    Args:
        module: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` or ``SimpleCell`` of
            ``flax.nnx`` or ``flax.linen``, bare or inside ``RNN`` or ``Bidirectional``.
        variables: for a linen module, its variables (``{"params": ...}``, as ``module.init``
            returns them); None for an nnx module, which holds its params.

    Returns:
        ``(spec, params)``: a one-layer spec (``bidirectional`` for ``Bidirectional``) with
        ``bias=True``; ``spec.apply(params, x)`` gives the module's outputs for the same ``x``.
        The params keep Flax's dtype.
    """
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise TypeError(
                f"variables: an nnx module holds its own params; expected None, "
                f"got {type(variables).__name__}"
            )
        params, argument = None, "module"
    elif isinstance(module, nn.Module):
        if variables is None or "params" not in variables:
            raise ValueError(
                f"variables: expected the linen module's variables ({{'params': ...}}, from "
                f"module.init), got {variables if variables is None else list(variables)}"
            )
        params, argument = variables["params"], "variables"
    else:
        raise TypeError(f"module: expected a flax.nnx or flax.linen module, got {type(module)}")

    cells, time_major = _cells(module, params, argument)
    directions = [_direction(cell, tree, argument) for cell, tree in cells]
    spec_types = {(spec_type, tuple(options.items())) for spec_type, options, _ in directions}
    if len(spec_types) > 1:
        raise ValueError(
            f"module: expected the same kind of cell in both directions, got "
            f"{' and '.join(_qualified(cell) for cell, _ in cells)} with different options"
        )
    spec_type, options, first = directions[0]
    spec = spec_type(
        input_size=first["weight_ih"].shape[1],
        hidden_size=first["weight_hh"].shape[1],
        batch_first=not time_major,
        bidirectional=len(directions) == 2,
        **options,
    )
    stack = (tuple(params for _, _, params in directions),)
    _check_shapes(spec, stack, argument)
    return spec, stack


def _set(dense: nnx.Linear, weight: jax.Array, bias: jax.Array | None) -> None:
    dense.kernel[...] = weight.T
    if bias is not None:
        dense.bias[...] = bias


def _nnx_cell(spec: Spec, params: Params) -> nnx.Module:
    """Flax's nnx cell for one direction; jrnn's two biases become its one where they are summed."""
    size, dtype = spec.hidden_size, params["weight_ih"].dtype
    zeros = jnp.zeros(params["weight_ih"].shape[0], dtype)
    bias = params.get("bias_ih", zeros) + params.get("bias_hh", zeros)
    zero = nnx.initializers.zeros  # every weight is set below: nothing to draw
    common = dict(
        dtype=None,
        param_dtype=dtype,
        kernel_init=zero,
        recurrent_kernel_init=zero,
        rngs=nnx.Rngs(0),
    )
    if isinstance(spec, jrnn.LSTM):
        cell = nnx.OptimizedLSTMCell(spec.input_size, size, **common)
        input_bias, hidden_bias = None, bias
    elif isinstance(spec, jrnn.GRU):
        b_hn = np.asarray(params.get("bias_hh", zeros)[2 * size :])
        if np.any(b_hn != 0):
            raise ValueError(
                "params: nnx.GRUCell has no b_hn (the bias inside r * (W_hn h + b_hn)); expected "
                f"bias_hh[{2 * size}:] to be zero, got max |b_hn| = {np.abs(b_hn).max():.3g}"
            )
        cell = nnx.GRUCell(spec.input_size, size, **common)
        input_bias, hidden_bias = bias, None
    else:
        activation = {"tanh": jnp.tanh, "relu": jax.nn.relu}[spec.nonlinearity]
        cell = nnx.SimpleCell(spec.input_size, size, activation_fn=activation, **common)
        input_bias, hidden_bias = bias, None
    _set(cell.dense_i, params["weight_ih"], input_bias)
    _set(cell.dense_h, params["weight_hh"], hidden_bias)
    return cell


def to_flax(spec: Spec, params: StackParams) -> nnx.Module:
    """Flax's own nnx layer computing what ``spec.apply(params, x)`` computes.

    ``jrnn.LSTM`` becomes ``nnx.RNN(nnx.OptimizedLSTMCell)``, ``jrnn.GRU``
    ``nnx.RNN(nnx.GRUCell)`` and ``jrnn.RNN`` ``nnx.RNN(nnx.SimpleCell)``; a bidirectional
    spec an ``nnx.Bidirectional`` of two; ``time_major`` is ``not spec.batch_first``.

    Args:
        spec: a one-layer ``jrnn.RNN``, ``LSTM`` or ``GRU`` without projection (Flax has no
            stacked layers and no projected LSTM).
        params: the spec's params. For a GRU, ``bias_hh``'s last block (``b_hn``) must be zero:
            ``nnx.GRUCell`` has no bias inside ``r * (W_hn h + b_hn)``.

    Returns:
        ``nnx.RNN`` or ``nnx.Bidirectional``, with Flax's defaults otherwise (it returns the
        outputs only; ``return_carry=True`` in its call adds the carry, in Flax's order).
    """
    if not isinstance(spec, jrnn.RNN | jrnn.LSTM | jrnn.GRU):
        raise TypeError(f"spec: expected a jrnn.RNN, LSTM or GRU, got {type(spec).__name__}")
    if spec.num_layers != 1:
        raise ValueError(
            f"spec: Flax's RNN is one layer; expected num_layers=1, got {spec.num_layers}"
        )
    if spec.proj_size:
        raise ValueError(
            f"spec: Flax's LSTM cells have no projection; expected proj_size=0, "
            f"got {spec.proj_size}"
        )
    _check_shapes(spec, params, "params")
    rnns = [nnx.RNN(_nnx_cell(spec, direction), time_major=not spec.batch_first)
            for direction in params[0]]  # fmt: skip
    if not spec.bidirectional:
        return rnns[0]
    return nnx.Bidirectional(*rnns, time_major=not spec.batch_first)
