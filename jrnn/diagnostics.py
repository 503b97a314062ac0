"""Gradient flow over time: how much the loss, and the last state, depend on each step's state.

BPTT multiplies one Jacobian ``dh_k/dh_{k-1}`` per step; when their norms stay below 1 the
gradient reaching early steps shrinks geometrically (vanishing gradients). These functions measure
it for every (layer, direction) of a stack, indexed ``s = layer * num_directions + direction``
like the leading axis of ``h_n`` (see :func:`state_labels`):

- :func:`hidden_grads` / :func:`hidden_grad_norms`: ``dL/dh_t``, the total derivative of a loss
  with respect to the hidden state ``h_t`` of state ``s`` at time position ``t`` (through the
  later steps of its own recurrence and through the layers above). It is computed by adding a
  zero perturbation ``eps_t`` to ``h_t`` at every step and differentiating with respect to ``eps``.
- :func:`newton`: the stack by one of the Newton methods (``"deer"``, ``"quasi-deer"``,
  ``"elk"``, :mod:`jrnn.methods.deer`), with the iterations, final residual and fallback of each
  layer's solve, from an optional warm start (such as the states of the previous training step).
- :func:`hidden_jacobians` / :func:`jacobian_norms`: ``dh_last/dh_t`` for one (layer, direction)
  with its inputs held fixed, the product of its per-step Jacobians from ``t`` to its last step.
  The forward direction's last step is ``t = T-1``; the reverse direction's is ``t = 0``, so its
  distance from the end is ``t`` rather than ``T-1-t``.

For LSTM ``h`` is perturbed and ``c`` is not; the path through ``c`` from step ``t+1`` on is
included. The stack is the one of :func:`jrnn.stack.apply` on the scan path
(:func:`jrnn.methods.scan.layer`, with a cell that adds the perturbation after each step),
without ``lengths`` (all sequences have ``T`` valid steps) and without dropout (evaluation mode).
The cell's output is its ``h``, as in every gated cell, or, for a cell whose output is not its
state (the LRU), its associative form's ``readout`` of the perturbed state
(:class:`jrnn.cells.Linear`); ``H_out`` is then the state size ``N``.

A model is a spec (``jrnn.RNN/LSTM/GRU``; ``x`` in its layout, e.g. `(B, T, D)`) or a cell with
stack params (``x`` time-major `(T, B, D)`, as for :func:`jrnn.stack.apply`, which allows stacks
where only some layers are bidirectional). Every function is jit-compiled with ``model`` and
``loss_fn`` static: pass the same ``loss_fn`` object again to reuse the compiled code.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import jrnn
    >>> from jrnn import diagnostics
    >>> spec = jrnn.GRU(3, 4, num_layers=2, bidirectional=True)
    >>> params = spec.init(jax.random.key(0))
    >>> x = jnp.ones((2, 6, 3))                                    # (B, T, D)
    >>> last_step = lambda output: jnp.sum(output[:, -1] ** 2)     # loss at the last step
    >>> diagnostics.hidden_grad_norms(spec, params, x, last_step).shape   # (S, T)
    (4, 6)
    >>> diagnostics.jacobian_norms(spec, params, x).shape
    (4, 6)
    >>> diagnostics.state_labels(params)
    ('layer 0 forward', 'layer 0 reverse', 'layer 1 forward', 'layer 1 reverse')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jrnn import stack
from jrnn.cells import Carry, Cell, Params
from jrnn.methods import Options, deer
from jrnn.methods import scan as scan_path
from jrnn.nn import Spec, _Stack
from jrnn.stack import StackParams

Model = Spec | Cell


def state_labels(params: StackParams) -> tuple[str, ...]:
    """A name for each state ``s`` of a stack, e.g. ``"layer 1 reverse"``, for plot legends."""
    names = {1: ("",), 2: (" forward", " reverse")}
    return tuple(
        f"layer {index}{names[len(layer)][direction]}"
        for index, layer in enumerate(params)
        for direction in range(len(layer))
    )


@functools.partial(jax.jit, static_argnames=("model", "loss_fn"))
def hidden_grads(
    model: Model,
    params: StackParams,
    x: jax.Array,
    loss_fn: Callable[[jax.Array], jax.Array],
    h0: Carry | None = None,
) -> jax.Array:
    """``dL/dh_t`` for every state ``s``, time position ``t`` and example ``b``.

    Args:
        model: a spec, or a cell whose stack params are ``params`` (see the module docstring).
        params: the model's params.
        x: a batch, `(B, T, D)` in the spec's layout, or `(T, B, D)` with a cell.
        loss_fn: maps the stack's output (`(B, T, F)` in the layout of ``x``) to a scalar loss,
            e.g. ``lambda out: jnp.mean((out[:, -1] @ w - y) ** 2)`` for a loss at the last step
            or a mean over ``out``'s time axis for a loss averaged over steps.
        h0: optional initial state, as for ``model.apply``.

    Returns:
        `(S, T, B, H_out)`: ``[s, t, b]`` is ``dL/dh_t`` of state ``s`` for example ``b``.
    """
    cell, xs, to_layout = _prepare(model, params, x, h0)

    def loss(eps: jax.Array) -> jax.Array:
        ys, _ = _forward(cell, params, xs, h0, eps)
        return loss_fn(to_layout(ys))

    return jax.grad(loss)(_zero_eps(cell, params, xs))


@functools.partial(jax.jit, static_argnames=("model", "loss_fn"))
def hidden_grad_norms(
    model: Model,
    params: StackParams,
    x: jax.Array,
    loss_fn: Callable[[jax.Array], jax.Array],
    h0: Carry | None = None,
) -> jax.Array:
    """`(S, T)` norms ``||dL/dh_t||`` over the batch and the features.

    Arguments as for :func:`hidden_grads`. With a loss averaged over the batch this is the norm
    of the gradient with respect to the whole batched state `h_t (B, H_out)`.
    """
    return jnp.linalg.norm(hidden_grads(model, params, x, loss_fn, h0), axis=(2, 3))


@functools.partial(jax.jit, static_argnames="model")
def hidden_jacobians(
    model: Model, params: StackParams, x: jax.Array, h0: Carry | None = None
) -> jax.Array:
    """``dh_last/dh_t`` of every state ``s`` within its own layer, inputs held fixed.

    Args:
        model: a spec, or a cell whose stack params are ``params`` (see the module docstring).
        params: the model's params.
        x: a batch, `(B, T, D)` in the spec's layout, or `(T, B, D)` with a cell.
        h0: optional initial state, as for ``model.apply``.

    Returns:
        `(S, T, B, H_out, H_out)`: ``[s, t, b, i, j]`` is ``d h_last[i] / d h_t[j]`` of state ``s``
        for example ``b``, where ``h_last`` is the state after the direction's last step.
    """
    cell, xs, _ = _prepare(model, params, x, h0)
    eps = _zero_eps(cell, params, xs)
    _, inputs = _forward(cell, params, xs, h0, eps)
    directions = [(p, direction == 1) for layer in params for direction, p in enumerate(layer)]
    return jnp.stack(
        [
            _jacobian(cell, p, inputs[s], _initial(cell, p, h0, s, xs), eps[s], reverse)
            for s, (p, reverse) in enumerate(directions)
        ]
    )


@functools.partial(jax.jit, static_argnames="model")
def jacobian_norms(
    model: Model, params: StackParams, x: jax.Array, h0: Carry | None = None
) -> jax.Array:
    """`(S, T)` spectral norms ``||dh_last/dh_t||_2`` averaged over the batch.

    The spectral norm is the largest factor by which a perturbation of ``h_t`` grows (or shrinks)
    by the last step. Arguments as for :func:`hidden_jacobians`.
    """
    jacobians = hidden_jacobians(model, params, x, h0)
    return jnp.mean(jnp.linalg.norm(jacobians, ord=2, axis=(3, 4)), axis=2)


def _prepare(
    model: Model, params: StackParams, x: Any, h0: Carry | None, lengths: Any = None
) -> tuple[Cell, jax.Array, Callable[[jax.Array], jax.Array]]:
    """The cell, time-major inputs and a map from time-major outputs back to ``x``'s layout."""
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x: expected a batched 3-D array, got shape {x.shape}")
    if isinstance(model, Cell):
        cell, batch_first = model, False
        jax.eval_shape(functools.partial(stack.apply, cell, lengths=lengths), params, x, h0)
    elif isinstance(model, _Stack):
        cell, batch_first = model.cell, model.batch_first
        # the spec's own checks of params, x, h0 and lengths (a concrete one's range too)
        jax.eval_shape(functools.partial(model.apply, lengths=lengths), params, x, h0)
    else:
        raise TypeError(
            f"model: expected a jrnn spec (jrnn.RNN, jrnn.LSTM, ...) or a jrnn.cells.Cell, "
            f"got {type(model).__name__}"
        )
    if batch_first:
        return cell, jnp.swapaxes(x, 0, 1), lambda ys: jnp.swapaxes(ys, 0, 1)
    return cell, x, lambda ys: ys


def newton(
    model: Model,
    params: StackParams,
    x: jax.Array,
    h0: Carry | None = None,
    *,
    lengths: jax.Array | None = None,
    dropout_key: jax.Array | None = None,
    guess: tuple[deer.Stats, ...] | None = None,
    **options: Any,
) -> tuple[jax.Array, Carry, tuple[deer.Stats, ...]]:
    """``model.apply`` by a Newton method, and what its solver did in each layer.

    Each layer runs :func:`jrnn.methods.deer.solve`; the result equals ``model.apply(params, x,
    h0, lengths=lengths, dropout_key=dropout_key, **options)``, dropout included.

    Args:
        model: a spec, or a cell whose stack params are ``params`` (see the module docstring).
        params: the model's params.
        x: a batch, `(B, T, D)` in the spec's layout, or `(T, B, D)` with a cell.
        h0: optional initial state, as for ``model.apply``.
        lengths: optional `(B,)` valid lengths.
        dropout_key: turns on a spec's dropout between layers, as for ``model.apply``.
        guess: warm start: the stats of an earlier call on inputs of the same shapes (the
            previous training step's), whose states become each layer's first iterate.
        **options: the fields of :class:`jrnn.methods.Options`; ``method`` one of ``"deer"``,
            ``"quasi-deer"``, ``"elk"``.

    Returns:
        ``(output, h_n, stats)``: as ``model.apply``, and one :class:`jrnn.methods.deer.Stats`
        per layer (``iterations``, ``residual``, ``fell_back``, ``states``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jrnn
        >>> from jrnn import diagnostics
        >>> spec = jrnn.GRU(3, 4)
        >>> params, x = spec.init(jax.random.key(0)), jnp.ones((2, 10, 3))
        >>> out, h_n, (stats,) = diagnostics.newton(spec, params, x, method="quasi-deer")
        >>> out.shape, bool(stats.fell_back), int(stats.iterations) < 10
        ((2, 10, 4), False, True)
    """
    opts = Options.of(options)
    cell, xs, to_layout = _prepare(model, params, x, h0, lengths)
    rate = 0.0 if isinstance(model, Cell) else model.dropout
    if h0 is None:
        h0 = stack.zero_state(cell, params, xs.shape[1:-1], xs.dtype)
    finals, stats = [], []
    s = 0
    for index, layer in enumerate(params):  # as jrnn.stack.apply
        end = s + len(layer)
        carry = jax.tree.map(lambda a, s=s, end=end: a[s:end], h0)
        first = None if guess is None else guess[index].states
        xs, carry, layer_stats = deer.solve(
            cell, layer, xs, carry, lengths=lengths, options=opts, guess=first
        )
        finals.append(carry)
        stats.append(layer_stats)
        s = end
        if dropout_key is not None and rate > 0 and index < len(params) - 1:
            xs = stack.dropout(jax.random.fold_in(dropout_key, index), rate, xs)
    h_n = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *finals)
    return to_layout(xs), h_n, tuple(stats)


def _zero_eps(cell: Cell, params: StackParams, xs: jax.Array) -> jax.Array:
    """`(S, T, B, H_out)` zeros: one perturbation per state, step and example."""
    h = _h(jax.eval_shape(lambda: cell.zero_carry(params[0][0], xs.shape[1:-1], xs.dtype)))
    return jnp.zeros((stack.num_states(params), xs.shape[0], *h.shape), h.dtype)


def _h(carry: Carry) -> jax.Array:
    return carry[0] if isinstance(carry, tuple) else carry


def _with_h(carry: Carry, h: jax.Array) -> Carry:
    return (h, *carry[1:]) if isinstance(carry, tuple) else h


def _initial(cell: Cell, params: Params, h0: Carry | None, s: int, xs: jax.Array) -> Carry:
    if h0 is None:
        return cell.zero_carry(params, xs.shape[1:-1], xs.dtype)
    return jax.tree.map(lambda a: a[s], h0)


def _perturbed(cell: Cell) -> Cell:
    """``cell`` reading ``(x_t, eps_t)``, with ``eps_t`` added to its ``h`` after the step; its
    output is the perturbed ``h``, or the readout of it for a cell that declares one."""
    form = cell.associative
    readout = None if form is None else form.readout

    def project(params, inputs):
        x, eps = inputs
        return cell.project(params, x), eps

    def recur(params, carry, inputs):
        gx, eps = inputs
        carry, _ = cell.recur(params, carry, gx)
        h = _h(carry) + eps
        return _with_h(carry, h), (h if readout is None else readout(params, h, gx))

    return cell._replace(
        project=project, recur=recur, kernel=None, with_matmul_dtype=None, associative=None
    )


def _direction(
    cell: Cell, params: Params, xs: jax.Array, carry: Carry, eps: jax.Array, reverse: bool
) -> tuple[Carry, jax.Array]:
    """One direction over `xs (T, B, D)`, adding `eps (T, B, H_out)` to ``h`` after every step."""
    h0 = jax.tree.map(lambda a: a[None], carry)
    ys, carry = scan_path.layer(
        _perturbed(cell), (params,), (xs, eps), h0, lengths=None, reverse=(reverse,),
        options=Options(method="scan"),
    )  # fmt: skip
    return jax.tree.map(lambda a: a[0], carry), ys


def _jacobian(
    cell: Cell, params: Params, xs: jax.Array, carry: Carry, eps: jax.Array, reverse: bool
) -> jax.Array:
    """`(T, B, H_out, H_out)`: one direction's last ``h`` differentiated by each step's ``h``."""

    def last_h(e: jax.Array) -> jax.Array:
        return _h(_direction(cell, params, xs, carry, e, reverse)[0])

    _, pullback = jax.vjp(last_h, eps)
    size = eps.shape[-1]
    # One cotangent per output coordinate i, the same for every example: row i of each Jacobian.
    basis = jnp.broadcast_to(jnp.eye(size, dtype=eps.dtype)[:, None, :], (size, *eps.shape[1:]))
    rows = jax.vmap(lambda cotangent: pullback(cotangent)[0])(basis)  # (H_i, T, B, H_j)
    return jnp.moveaxis(rows, 0, 2)


def _forward(
    cell: Cell, params: StackParams, xs: jax.Array, h0: Carry | None, eps: jax.Array
) -> tuple[jax.Array, list[jax.Array]]:
    """The stack with ``eps[s]`` added to state ``s``: its outputs and the inputs of each state."""
    inputs = []
    s = 0
    for layer in params:
        outputs = []
        for direction, p in enumerate(layer):
            inputs.append(xs)
            carry = _initial(cell, p, h0, s, xs)
            _, ys = _direction(cell, p, xs, carry, eps[s], reverse=direction == 1)
            outputs.append(ys)
            s += 1
        xs = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
    return xs, inputs
