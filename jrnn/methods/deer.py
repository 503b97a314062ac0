"""DEER, quasi-DEER and ELK: a layer of any differentiable cell, all time steps at once.

Where the scan runs ``T`` steps one after another, these methods find all ``T`` states together
by Newton's method (:mod:`jrnn.methods.newton`): every iteration linearises each step around the
current guess and solves the linear recurrence with an associative scan, in depth ``log T``.
They compute the function of ``method="scan"`` to the solver's tolerance, for every option of a
layer (directions, ``lengths``, ``h0``), with gradients by the implicit function theorem.

- ``"deer"``: Newton with the whole Jacobian of the step, `(n, n)` per step and row, where
  ``n`` is the size of the carry (``2 H`` for LSTM's ``(h, c)``): ``O(T n^3)`` work and
  ``O(T n^2)`` memory; converges in few iterations.
- ``"quasi-deer"``: only the Jacobian's diagonal, ``O(T n)`` work and memory for the solve and
  its gradient; more iterations. The built-in cells have it in closed form; for another cell it
  costs ``n`` forward-mode derivatives of the step.
- ``"elk"``: Levenberg-Marquardt with the whole Jacobian, solved by a parallel Kalman smoother.
  It refuses a step that would raise the sum of squared residuals and damps more instead, so
  its iterates never overflow; near the solution the damping vanishes and it is Newton. On a
  badly conditioned problem (a strongly expanding step) it can stall, and the layer falls back.

``Options.solver`` (:class:`jrnn.methods.options.Solver`) sets the tolerance, the iteration
budget and the damping; a positive damping with ``"quasi-deer"`` is quasi-ELK. The Jacobian is
``jax.jacfwd`` of the cell's ``recur`` (its carry flattened per row into one vector): a cell
whose step has no forward-mode derivative, or only a zero one where its state does change it
(``jnp.round``, integer casts, ``stop_gradient``), cannot run here, and :func:`unsupported` says
so. Where the solver does not converge within ``max_iter`` iterations the layer runs the
sequential loop instead (inside ``jit`` a ``jax.lax.cond``: one of the two runs; under ``vmap``
both do). :func:`solve` returns how it went (:class:`Stats`) and takes a warm start;
:func:`jrnn.diagnostics.newton` does the same for a whole spec. ``unroll`` applies to the
sequential fallback; ``remat`` is not used.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import jrnn
    >>> spec = jrnn.GRU(3, 4, bidirectional=True)
    >>> params = spec.init(jax.random.key(0))
    >>> x = jax.random.normal(jax.random.key(1), (2, 20, 3))
    >>> want, h_want = spec.apply(params, x, method="scan")
    >>> got, h_got = spec.apply(params, x, method="quasi-deer")
    >>> bool(jnp.allclose(got, want, atol=1e-4)), bool(jnp.allclose(h_got, h_want, atol=1e-4))
    (True, True)
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from jrnn import cells
from jrnn.cells import Carry, Cell, Params
from jrnn.methods import newton
from jrnn.methods.common import reverse_time, steps_of, valid_mask
from jrnn.methods.newton import Stats
from jrnn.methods.options import Options
from jrnn.methods.scan import default_unroll

DIAGONAL = {"deer": False, "quasi-deer": True, "elk": False}  # the methods, and their Jacobian
DAMPING = {"deer": 0.0, "quasi-deer": 0.0, "elk": 1.0}  # their damping when Solver has none
TOL = {jnp.dtype(jnp.float64): 1e-10}  # the tolerance when Solver has none, by dtype; else 1e-5
DEFAULT = Options(method="deer")

__all__ = ["Stats", "layer", "solve", "unsupported"]


def unsupported(cell: Cell, params: tuple[Params, ...], xs: Any, options: Options) -> str | None:
    """Why Newton's method cannot run this layer, or None.

    It needs forward-mode derivatives of the cell's step, traced here on abstract values: the
    step must go through ``jax.jvp``, and every carry leaf that the step changes with the carry
    must get a nonzero derivative from it.
    """
    if options.matmul_dtype is not None:
        return (
            f"it has no mixed precision (matmul_dtype={options.matmul_dtype!r}): the "
            "mixed-precision matmul has no forward-mode derivative"
        )
    return _not_linearisable(cell, params[0], xs)


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: Any,
    h0: Carry,
    *,
    lengths: jax.Array | None,
    reverse: tuple[bool, ...],
    options: Options,
) -> tuple[jax.Array, Carry]:
    """One layer with ``k = len(params)`` directions by Newton's method; arguments and results
    as :func:`jrnn.methods.scan.layer`."""
    ys, carry, _ = _solve(cell, params, xs, h0, lengths, reverse, options, None)
    return ys, carry


def solve(
    cell: Cell,
    params: tuple[Params, ...],
    xs: Any,
    h0: Carry,
    *,
    lengths: jax.Array | None = None,
    reverse: tuple[bool, ...] | None = None,
    options: Options = DEFAULT,
    guess: jax.Array | None = None,
) -> tuple[jax.Array, Carry, Stats]:
    """:func:`layer` with its :class:`Stats`, from an optional warm start.

    Args:
        cell: the layer's cell.
        params: one params pytree per direction.
        xs: `(T, B, D)` time-major inputs (or a pytree of such).
        h0: the initial carry, leaves `(k, B, ...)`.
        lengths: optional `(B,)` valid lengths.
        reverse: ``k`` flags, True for a direction that runs backwards in time; default
            ``(False, True)[:k]``.
        options: ``method`` one of ``"deer"``, ``"quasi-deer"``, ``"elk"``; ``solver``.
        guess: `(T, k, B, n)` the first iterate, such as ``stats.states`` of an earlier call
            (the previous training step's); zeros when None.

    Returns:
        ``(ys, carry, stats)``: ``ys`` `(T, B, k*H_out)` and the final carry as
        :func:`jrnn.methods.scan.layer`; ``stats`` with ``states`` `(T, k, B, n)`, the flat
        carry after each step (reverse directions in their own running order).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jrnn import cells
        >>> from jrnn.methods import Options, Solver, deer
        >>> params = (cells.LSTM.init(jax.random.key(0), 3, 4),)
        >>> xs, h0 = jnp.ones((6, 2, 3)), (jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 4)))
        >>> options = Options(method="deer", solver=Solver(max_iter=6))
        >>> ys, (h, c), stats = deer.solve(cells.LSTM, params, xs, h0, options=options)
        >>> ys.shape, stats.states.shape, bool(stats.fell_back), int(stats.iterations) < 6
        ((6, 2, 4), (6, 1, 2, 8), False, True)
        >>> warm = deer.solve(cells.LSTM, params, xs, h0, options=options, guess=stats.states)[2]
        >>> int(warm.iterations)
        0
    """
    if options.method not in DIAGONAL:
        raise ValueError(f"method: expected one of {list(DIAGONAL)}, got {options.method!r}")
    reason = unsupported(cell, params, xs, options)
    if reason:
        raise ValueError(f"method: {options.method!r} cannot run this layer: {reason}")
    reverse = (False, True)[: len(params)] if reverse is None else reverse
    return _solve(cell, params, xs, h0, lengths, reverse, options, guess)


def _solve(cell, params, xs, h0, lengths, reverse, options, guess):
    """:func:`solve` once its layer is known to be supported and ``reverse`` is set."""
    steps = steps_of(xs)
    layout = _Layout.of(h0)
    keep = None if lengths is None else valid_mask(lengths, steps)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    gx = [cell.project(p, reverse_time(xs, lengths) if flag else xs)
          for p, flag in zip(params, reverse, strict=True)]  # fmt: skip
    gx = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *gx)  # (T, k, B, ...)
    h0_flat = layout.flat(h0)  # (k, B, n)
    want = (steps, *h0_flat.shape)
    if guess is None:
        guess = jnp.zeros(want, h0_flat.dtype)
    elif jnp.shape(guess) != want or jnp.result_type(guess) != h0_flat.dtype:
        raise ValueError(
            f"guess: expected shape {want} (T, k, B, n) and dtype {h0_flat.dtype}, "
            f"got {jnp.shape(guess)} and {jnp.result_type(guess)}"
        )

    # one direction at a time inside, vmapped over them: params (k, ...), states (T', k, B, n)
    in_axes = (0, 1, (1, None))
    step = jax.vmap(functools.partial(_step, cell, layout), in_axes, out_axes=1)
    jacobian = jax.vmap(
        functools.partial(_jacobian, cell, layout, DIAGONAL[options.method]), in_axes, out_axes=1
    )
    config = _config(options, h0_flat.dtype)
    stats = newton.solve(step, jacobian, config, stacked, (gx, keep), h0_flat, guess)

    s_prev = jnp.concatenate([h0_flat[None], stats.states[:-1]])
    output = jax.vmap(lambda p, s, g: cell.recur(p, layout.unflat(s), g)[1], (0, 1, 1), 1)
    ys = output(stacked, s_prev, gx)  # (T, k, B, H_out)
    if keep is not None:
        ys = jnp.where(keep[:, None, :, None], ys, jnp.zeros_like(ys))
    outputs = [reverse_time(ys[:, d], lengths) if flag else ys[:, d]
               for d, flag in enumerate(reverse)]  # fmt: skip
    return jnp.concatenate(outputs, axis=-1), layout.unflat(stats.states[-1]), stats


class _Layout(NamedTuple):
    """Where the leaves `(*rows, *shape)` of a carry lie in one flat state `(*rows, n)`."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, h0: Carry) -> _Layout:  # leaves (k, B, ...)
        leaves, treedef = jax.tree.flatten(h0)
        return cls(treedef, tuple(leaf.shape[2:] for leaf in leaves))

    def flat(self, carry: Carry) -> jax.Array:
        leaves = jax.tree.leaves(carry)
        rows = leaves[0].shape[: leaves[0].ndim - len(self.shapes[0])]
        return jnp.concatenate([leaf.reshape(*rows, -1) for leaf in leaves], axis=-1)

    def unflat(self, s: jax.Array) -> Carry:
        ends = np.cumsum([math.prod(shape) for shape in self.shapes])[:-1]
        parts = jnp.split(s, ends, axis=-1)
        return self.treedef.unflatten(
            [p.reshape(*s.shape[:-1], *shape) for p, shape in zip(parts, self.shapes, strict=True)]
        )


def _config(options: Options, dtype: Any) -> newton.Config:
    solver = options.solver
    return newton.Config(
        diagonal=DIAGONAL[options.method],
        damping=DAMPING[options.method] if solver.damping is None else solver.damping,
        tol=TOL.get(jnp.dtype(dtype), 1e-5) if solver.tol is None else solver.tol,
        max_iter=solver.max_iter,
        unroll=default_unroll() if options.unroll is None else options.unroll,
    )


# -- Jacobians of the step ----------------------------------------------------------------------


def _step(cell, layout, params, s_prev, inputs):
    """One direction's steps: `s_prev (T', B, n)` -> `(T', B, n)`; padding keeps the state."""
    gx, keep = inputs
    s = layout.flat(cell.recur(params, layout.unflat(s_prev), gx)[0])
    return s if keep is None else jnp.where(keep[..., None], s, s_prev)


def _jacobian(cell, layout, diagonal, params, s_prev, inputs):
    """`(T', B, n, n)` ``d s_t / d s_{t-1}`` by ``jax.jacfwd`` per step and row, or the diagonal
    `(T', B, n)`: closed form for a built-in cell, else one ``jax.jvp`` per state entry."""
    if not diagonal:

        def row(s, x):
            one = jax.tree.map(lambda a: a[None, None], x)
            return _step(cell, layout, params, s[None, None], one)[0, 0]

        return jax.vmap(jax.vmap(jax.jacfwd(row)))(s_prev, inputs)
    if cell in cells.BUILTIN.values() and "weight_hr" not in params:
        return _builtin_diagonal(cell, layout, params, s_prev, inputs)
    linear = jax.linearize(lambda s: _step(cell, layout, params, s, inputs), s_prev)[1]
    size = s_prev.shape[-1]

    def add(i, diagonal):  # a loop over the unit tangents, so memory stays that of one
        unit = jnp.broadcast_to(jnp.arange(size) == i, s_prev.shape).astype(s_prev.dtype)
        return diagonal + unit * linear(unit)

    return jax.lax.fori_loop(0, size, add, jnp.zeros_like(s_prev))


def _builtin_diagonal(cell, layout, params, s_prev, inputs):
    """The Jacobian's diagonal for a built-in cell, one ``jax.jvp`` per carry leaf.

    A built-in's step is elementwise in the hidden units except for ``gh = h @ W_hh.T + b_hh``.
    With tangent ones on ``h``, ``gh``'s tangent is each row's sum of ``W_hh``; a tangent on
    ``b_hh`` of ``own - row sum`` (``own`` the diagonal of each gate's block of ``W_hh``) leaves
    unit ``i`` only its own ``W_hh[g*H + i, i]``, so the tangent of each output is
    ``d out_i / d h_i``. The cell state ``c`` of LSTM enters no matmul.
    """
    gx, keep = inputs
    weight = params["weight_hh"]
    hidden = weight.shape[1]
    own = weight.reshape(-1, hidden, hidden)[:, jnp.arange(hidden), jnp.arange(hidden)]
    own = own.reshape(-1)
    params = params | {"bias_hh": params.get("bias_hh", jnp.zeros_like(own))}
    carry = layout.unflat(s_prev)
    leaves, treedef = jax.tree.flatten(carry)
    parts = []

    def new_carry(p, c):
        return cell.recur(p, c, gx)[0]

    for index in range(len(leaves)):
        d_carry = treedef.unflatten(
            [jnp.ones_like(a) if i == index else jnp.zeros_like(a) for i, a in enumerate(leaves)]
        )
        d_params = jax.tree.map(jnp.zeros_like, params)
        if index == 0:
            d_params["bias_hh"] = own - weight.sum(axis=1)
        d_new = jax.jvp(new_carry, (params, carry), (d_params, d_carry))[1]
        parts.append(jax.tree.leaves(d_new)[index])
    diagonal = layout.flat(treedef.unflatten(parts))
    return diagonal if keep is None else jnp.where(keep[..., None], diagonal, 1)


# -- can the step be linearised? ----------------------------------------------------------------


def _not_linearisable(cell: Cell, params: Params, xs: Any) -> str | None:
    """Why ``jax.jvp`` cannot linearise ``cell``'s step, from its traced jaxprs, or None."""

    def abstract(a):
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    p = jax.tree.map(abstract, params)
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[2:], a.dtype), xs)  # one row
    dtype = jax.tree.leaves(xs)[0].dtype
    carry = jax.eval_shape(lambda p: cell.zero_carry(p, (), dtype), p)
    gx = jax.eval_shape(cell.project, p, x)
    names = cell.carry_names
    leaves = jax.tree.leaves(carry)
    for name, leaf in zip(names, leaves, strict=True):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return f"cell {cell.name}: carry {name} is {leaf.dtype}; Newton's method needs floats"

    def new(carry, params, gx):
        return tuple(jax.tree.leaves(cell.recur(params, carry, gx)[0]))

    def tangent(carry, d_carry, params, gx):
        return jax.jvp(lambda c: new(c, params, gx), (carry,), (d_carry,))[1]

    try:
        primal = jax.make_jaxpr(new)(carry, p, gx)
        traced = jax.jit(tangent).trace(carry, carry, p, gx)
        traced.lower()  # where a custom_vjp's missing forward mode shows
    except (TypeError, ValueError, NotImplementedError) as error:
        message = str(error).splitlines()[0] if str(error) else ""
        return (
            f"cell {cell.name}: jax.jvp cannot differentiate its step "
            f"({type(error).__name__}: {message})"
        )
    n = len(leaves)
    moves = _depends(primal.jaxpr, range(n))
    responds = _depends(traced.jaxpr.jaxpr, range(n, 2 * n))
    for name, changed, derivative in zip(names, moves, responds, strict=True):
        if changed and not derivative:
            return (
                f"cell {cell.name}: its new {name} depends on the carry but has a zero "
                "derivative (a non-differentiable step, e.g. jnp.round, an integer cast or "
                "stop_gradient), so its Jacobian cannot linearise it"
            )
    return None


def _depends(jaxpr: Any, sources: range) -> list[bool]:
    """For each output of ``jaxpr``, whether it depends on the inputs numbered ``sources``
    (conservatively: an equation with any such input makes all its outputs depend)."""
    live = {v for i, v in enumerate(jaxpr.invars) if i in sources}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jax_core.Literal) and v in live for v in eqn.invars):
            live.update(eqn.outvars)
    return [not isinstance(v, jax_core.Literal) and v in live for v in jaxpr.outvars]
