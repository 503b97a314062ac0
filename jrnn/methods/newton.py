"""Newton's method over all time steps at once: the solver behind DEER, quasi-DEER and ELK.

Notation: ``T`` steps, any number of row axes ``...`` (directions, batch), ``n`` the size of a
flat state ``s_t``. A recurrence ``s_t = f(s_{t-1}, x_t)`` from a given ``s_0 = h0`` is the root
of ``r(s) = s - F(s)``, ``F(s)_t = f(s_{t-1}, x_t)``, for all ``T`` states together. Newton's
method linearises every step around the current guess, ``f(s_{t-1}) ~ J_t s_{t-1} + c_t``, and
solves the linear recurrence ``s_t = J_t s_{t-1} + c_t`` with ``jax.lax.associative_scan`` over
affine maps, ``(J_1, c_1) . (J_2, c_2) = (J_2 J_1, J_2 c_1 + c_2)``: depth ``log T`` instead of
``T``. In exact arithmetic the first ``i`` states are exact after ``i`` iterations, so at most
``T`` iterations are needed; near the solution convergence is quadratic.

- DEER (Lim et al. 2024) keeps ``J_t`` whole: `(T, ..., n, n)`, ``O(T n^3)`` work per iteration.
- quasi-DEER (Gonzalez et al. 2024) keeps its diagonal: `(T, ..., n)`, ``O(T n)`` work and memory;
  the iterations still converge to the same states, only more slowly.
- ELK (the same paper) takes a Levenberg-Marquardt step instead: it minimises
  ``sum_t |s_t - J_t s_{t-1} - c_t|^2 + damping * |s_t - guess_t|^2``, which is the posterior
  mean of a linear-Gaussian state-space model (dynamics ``J_t, c_t`` with unit noise, the guess
  observed with noise ``1 / damping``). A parallel Kalman filter (Sarkka and Garcia-Fernandez
  2021) and a Rauch-Tung-Striebel smoother, both associative scans, compute it. Per row, a step
  that lowers ``sum |r|^2`` is taken and the damping divided by 10; any other is refused and the
  damping multiplied by 10. So the kept iterate's ``sum |r|^2`` never grows (nor overflows, as
  Newton's iterates can); on a badly conditioned problem the refusals can stall it short of the
  tolerance.

The gradient is the implicit function theorem's, not backpropagation through the iterations:
with the cotangent ``g_t`` of the states, the adjoint ``l_t = g_t + J_{t+1}^T l_{t+1}`` is one
linear recurrence backwards in time. With whole Jacobians it is one associative scan; with
diagonal ones, quasi-Newton sweeps (the diagonal part by a scan, the rest applied with
``jax.vjp``) until it converges, so memory stays ``O(T n)``. Then one ``jax.vjp`` of ``F`` turns
``l`` into the cotangents of the params, inputs and ``h0``.

Where Newton does not reach the tolerance in ``max_iter`` iterations (or diverges), :func:`solve`
runs the recurrence one step after another instead (``jax.lax.scan``; a ``jax.lax.cond``, so
inside ``jit`` only one of the two runs), and says so in its :class:`Stats`; the backward
recurrence of the quasi-Newton gradient falls back the same way.

Example:
    >>> import jax.numpy as jnp
    >>> from jrnn.methods import newton
    >>> def step(a, s_prev, xs):                  # s_t = tanh(a * s_{t-1} + x_t), per row
    ...     return jnp.tanh(a * s_prev + xs)
    >>> def jacobian(a, s_prev, xs):              # its diagonal Jacobian
    ...     return a * (1 - step(a, s_prev, xs) ** 2)
    >>> xs, h0 = jnp.linspace(-1, 1, 12).reshape(6, 2, 1), jnp.zeros((2, 1))
    >>> config = newton.Config(diagonal=True, damping=0.0, tol=1e-6, max_iter=20)
    >>> stats = newton.solve(step, jacobian, config, jnp.float32(0.5), xs, h0, jnp.zeros_like(xs))
    >>> bool(stats.fell_back), int(stats.iterations) <= 6
    (False, True)
    >>> sequential = newton.sequential(step, jnp.float32(0.5), xs, h0)
    >>> bool(jnp.allclose(stats.states, sequential, atol=1e-6))
    True
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# step(params, s_prev (T, ..., n), xs (T, ...)) -> s (T, ..., n), for any number T of steps
Step = Callable[[Any, jax.Array, Any], jax.Array]
# jacobian(params, s_prev, xs) -> d s / d s_prev: (T, ..., n, n), or its diagonal (T, ..., n)
Jacobian = Callable[[Any, jax.Array, Any], jax.Array]


class Config(NamedTuple):
    """The solver's static settings.

    Attributes:
        diagonal: the Jacobians are diagonals `(T, ..., n)` (quasi-Newton), else whole.
        damping: the initial Levenberg-Marquardt damping of every row; 0 for plain Newton steps.
        tol: converged when ``max |s_t - f(s_{t-1})|`` is at most ``tol``; the backward
            recurrence of a diagonal solve stops at ``tol`` times the largest ``|l_t|``.
        max_iter: the most iterations (linear solves) before falling back to the loop.
        unroll: ``jax.lax.scan`` unrolling of the fallback loop.
    """

    diagonal: bool
    damping: float
    tol: float
    max_iter: int
    unroll: int = 1


class Stats(NamedTuple):
    """What one solve did, as arrays (so it can leave ``jit``); only ``states`` has gradients.

    Attributes:
        iterations: int32, the Newton (or Levenberg-Marquardt) iterations run, rejected ELK
            steps included.
        residual: the largest ``|s_t - f(s_{t-1})|`` at the last iterate (``inf`` where
            Newton overflowed).
        fell_back: whether the states come from the sequential loop because Newton did not
            converge.
        states: `(T, ..., n)` the solution; pass it back as a warm start.
        history: `(max_iter + 1,)` the residual of the guess and of each iterate after it
            (the kept one after a refused ELK step), nan after the last.
    """

    iterations: jax.Array
    residual: jax.Array
    fell_back: jax.Array
    states: jax.Array
    history: jax.Array


def solve(
    step: Step,
    jacobian: Jacobian,
    config: Config,
    params: Any,
    xs: Any,
    h0: jax.Array,
    guess: jax.Array,
) -> Stats:
    """The states ``s_t = step(params, s_{t-1}, xs_t)``, ``s_0 = h0``, by Newton's method.

    Args:
        step: the recurrence, elementwise over time and rows: ``(params, s_prev, xs) -> s`` with
            `s_prev (T', ..., n)` and the leaves of ``xs`` `(T', ...)` for any ``T'``.
        jacobian: ``(params, s_prev, xs) -> d step / d s_prev``, `(T', ..., n, n)`, or its
            diagonal `(T', ..., n)` when ``config.diagonal``.
        config: the solver's settings.
        params: the step's time-independent inputs (differentiable).
        xs: the step's per-step inputs, leaves `(T, ...)` (differentiable where floating).
        h0: `(..., n)` the state before the first step.
        guess: `(T, ..., n)` the first iterate (zeros, or an earlier solution).

    Returns:
        :class:`Stats`; ``states`` are differentiable with respect to ``params``, ``xs`` and
        ``h0``.
    """
    states, iterations, history, converged = _solve(step, jacobian, config, params, xs, h0,
                                                    guess)  # fmt: skip
    return Stats(iterations, history[iterations], ~converged, states, history)


def sequential(step: Step, params: Any, xs: Any, h0: jax.Array, unroll: int = 1) -> jax.Array:
    """`(T, ..., n)` the same states one step after another: a ``jax.lax.scan`` over ``xs``."""

    def body(s, x_t):
        s = step(params, s[None], jax.tree.map(lambda a: a[None], x_t))[0]
        return s, s

    return jax.lax.scan(body, h0, xs, unroll=unroll)[1]


# -- Jacobians whole or as diagonals ------------------------------------------------------------


class _Algebra(NamedTuple):
    """The products the solver needs, of Jacobians `(..., n, n)` or of their diagonals."""

    mv: Callable[[jax.Array, jax.Array], jax.Array]  # A x
    mm: Callable[[jax.Array, jax.Array], jax.Array]  # A B
    t: Callable[[jax.Array], jax.Array]  # A^T
    inv: Callable[[jax.Array], jax.Array]  # A^-1
    identity: Callable[[jax.Array], jax.Array]  # I shaped like A


DENSE = _Algebra(
    mv=lambda a, x: jnp.einsum("...ij,...j->...i", a, x),
    mm=jnp.matmul,
    t=lambda a: jnp.swapaxes(a, -1, -2),
    inv=jnp.linalg.inv,
    identity=lambda a: jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape),
)
DIAGONAL = _Algebra(
    mv=operator.mul, mm=operator.mul, t=lambda a: a, inv=lambda a: 1 / a, identity=jnp.ones_like
)


def _earlier(s: jax.Array, h0: jax.Array) -> jax.Array:
    """``s_{t-1}`` for every ``t``: `(T, ..., n)`, ``h0`` first."""
    return jnp.concatenate([h0[None], s[:-1]])


def _later(a: jax.Array) -> jax.Array:
    """``a_{t+1}`` for every ``t``, zeros after the last step."""
    return jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])


def _max_abs(a: jax.Array) -> jax.Array:
    """``max |a|``, or ``inf`` where any entry is not finite (XLA:CPU's max can skip a nan)."""
    return jnp.where(jnp.all(jnp.isfinite(a)), jnp.max(jnp.abs(a)), jnp.inf)


def _per_row(values: jax.Array, like: jax.Array) -> jax.Array:
    """Row values `(...)` shaped to broadcast against `like (T, ..., trailing)`."""
    return values.reshape((1, *values.shape) + (1,) * (like.ndim - 1 - values.ndim))


def _affine(ops: _Algebra, a: jax.Array, b: jax.Array, reverse: bool = False) -> jax.Array:
    """``x_t = a_t x_{t-1} + b_t`` from ``x_0 = 0`` (``x_t = a_t x_{t+1} + b_t`` from the end
    when ``reverse``), by an associative scan over the affine maps."""

    def compose(first, second):
        a1, b1 = first
        a2, b2 = second
        return ops.mm(a2, a1), ops.mv(a2, b1) + b2

    return jax.lax.associative_scan(compose, (a, b), reverse=reverse)[1]


def _kalman(ops: _Algebra, a: jax.Array, c: jax.Array, y: jax.Array, gain: jax.Array) -> jax.Array:
    """The smoothed means of ``s_t = a_t s_{t-1} + c_t + noise``, ``y_t = s_t + noise``: the
    Levenberg-Marquardt step (``a_1 = 0``: ``c_1`` is the first state's prior mean).

    Both noises are isotropic (the dynamics' unit, the observations' ``1 / damping``), so the
    Kalman gain of one step alone is the scalar ``gain = damping / (1 + damping)`` per row. The
    filter runs as the associative scan of Sarkka and Garcia-Fernandez's elements
    ``(A, b, C, eta, J)``, the smoother as a backward affine scan.
    """
    k, at = _per_row(gain, c), ops.t(a)
    km = _per_row(gain, a)
    ident = ops.identity(a)
    elements = ((1 - km) * a, (1 - k) * c + k * y, (1 - km) * ident, k * ops.mv(at, y - c),
                km * ops.mm(at, a))  # fmt: skip
    _, mean, cov, _, _ = jax.lax.associative_scan(functools.partial(_filter, ops), elements)
    a_next, c_next = _later(a), _later(c)  # zero after the last step: no smoothing there
    predicted = ops.mm(ops.mm(a_next, cov), ops.t(a_next)) + ident
    smoother_gain = ops.mm(ops.mm(cov, ops.t(a_next)), ops.inv(predicted))
    return _affine(ops, smoother_gain, mean - ops.mv(smoother_gain, ops.mv(a_next, mean) + c_next),
                   reverse=True)  # fmt: skip


def _filter(ops: _Algebra, first: tuple, second: tuple) -> tuple:
    """Two filtering elements combined (Sarkka and Garcia-Fernandez 2021, lemma 8)."""
    a1, b1, c1, eta1, j1 = first
    a2, b2, c2, eta2, j2 = second
    m = ops.inv(ops.identity(c1) + ops.mm(c1, j2))  # (I + C1 J2)^-1; its transpose (I + J2 C1)^-1
    a2m, a1tm = ops.mm(a2, m), ops.mm(ops.t(a1), ops.t(m))
    return (
        ops.mm(a2m, a1),
        ops.mv(a2m, b1 + ops.mv(c1, eta2)) + b2,
        ops.mm(ops.mm(a2m, c1), ops.t(a2)) + c2,
        ops.mv(a1tm, eta2 - ops.mv(j2, b1)) + eta1,
        ops.mm(ops.mm(a1tm, j2), a1) + j1,
    )


# -- the iterations and their implicit gradient -------------------------------------------------


class _Kept(NamedTuple):
    """The iterate the solver stands on (the last, or ELK's best) and its linearisation."""

    s: jax.Array  # (T, ..., n)
    fs: jax.Array  # f(s_{t-1}) for every t
    jac: jax.Array  # the Jacobians there
    residual: jax.Array  # max |s - fs|, inf where not finite
    merit: jax.Array  # (...,) sum of |s - fs|^2 per row


class _Loop(NamedTuple):
    i: jax.Array  # iterates evaluated so far
    s: jax.Array  # the next iterate to evaluate
    kept: _Kept
    damping: jax.Array  # (...,) per row
    history: jax.Array  # (max_iter + 1,) the kept residual after each evaluation


def _iterate(step, jacobian, config, params, xs, h0, guess) -> _Loop:
    """Newton or Levenberg-Marquardt iterations from ``guess``: each evaluates and linearises
    one iterate (the guess first), keeps it (ELK: per row, where it lowers the row's merit) and,
    unless the kept one has converged, solves for the next."""
    ops = DIAGONAL if config.diagonal else DENSE
    damped = config.damping > 0

    def linearise(s):
        s_prev = _earlier(s, h0)
        fs = step(params, s_prev, xs)
        r = s - fs
        merit = jnp.sum(r * r, (0, r.ndim - 1))  # per row
        return _Kept(s, fs, jacobian(params, s_prev, xs), _max_abs(r), merit)

    def done(kept, i):
        stop = (kept.residual <= config.tol) | ~jnp.isfinite(kept.residual)
        return stop | (i > config.max_iter)

    def propose(kept, damping):
        a = kept.jac.at[0].set(0)  # s_1 = f(h0), known exactly
        c = kept.fs - ops.mv(a, _earlier(kept.s, h0))
        if not damped:
            return _affine(ops, a, c)
        return _kalman(ops, a, c, kept.s, 1 / (1 + 1 / damping))

    def iteration(loop):
        new = linearise(loop.s)
        damping = loop.damping
        if damped:  # per row: keep an iterate that lowers the merit, else damp more
            accept = new.merit < loop.kept.merit  # false for nan

            def pick(a, b):
                return jnp.where(_per_row(accept, a), a, b)

            s, fs, jac = (pick(a, b) for a, b in zip(new[:3], loop.kept[:3], strict=True))
            merit = jnp.where(accept, new.merit, loop.kept.merit)
            kept = _Kept(s, fs, jac, _max_abs(s - fs), merit)
            damping = jnp.where(accept, damping / 10, damping * 10)
        else:
            kept = new
        i = loop.i + 1
        s = jax.lax.cond(done(kept, i), lambda: kept.s, lambda: propose(kept, damping))
        return _Loop(i, s, kept, damping, loop.history.at[loop.i].set(kept.residual))

    s_prev = _earlier(guess, h0)
    jac = jax.eval_shape(jacobian, params, s_prev, xs)
    inf = jnp.array(jnp.inf, guess.dtype)
    rows = guess.shape[1:-1]
    unseen = _Kept(guess, guess, jnp.zeros(jac.shape, jac.dtype), inf, jnp.full(rows, inf))
    history = jnp.full(config.max_iter + 1, jnp.nan, guess.dtype)
    damping = jnp.full(rows, config.damping, guess.dtype)
    first = _Loop(jnp.int32(0), guess, unseen, damping, history)
    return jax.lax.while_loop(lambda loop: (loop.i == 0) | ~done(loop.kept, loop.i), iteration,
                              first)  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _solve(step, jacobian, config, params, xs, h0, guess):
    return _forward(step, jacobian, config, params, xs, h0, guess, with_jacobians=False)[0]


def _forward(step, jacobian, config, params, xs, h0, guess, with_jacobians=True):
    """``((states, iterations, history, converged), jacobians at the states or None)``:
    Newton's states where it converged, else the sequential loop's."""
    loop = _iterate(step, jacobian, config, params, xs, h0, guess)
    kept = loop.kept
    converged = kept.residual <= config.tol
    stats = (loop.i - 1, loop.history, converged)
    if not with_jacobians:
        s = jax.lax.cond(converged, lambda: kept.s, lambda: sequential(step, params, xs, h0,
                                                                        config.unroll))  # fmt: skip
        return (s, *stats), None

    def fallback():
        s = sequential(step, params, xs, h0, config.unroll)
        return s, jacobian(params, _earlier(s, h0), xs)

    s, jac = jax.lax.cond(converged, lambda: (kept.s, kept.jac), fallback)
    return (s, *stats), jac


def _solve_fwd(step, jacobian, config, params, xs, h0, guess):
    outputs, jac = _forward(step, jacobian, config, params, xs, h0, guess)
    return outputs, (params, xs, h0, outputs[0], jac)


def _solve_bwd(step, jacobian, config, saved, cotangents):
    """The implicit function theorem at the solution, however it was found."""
    params, xs, h0, s, jac = saved
    s_bar = cotangents[0]
    s_prev = _earlier(s, h0)
    if config.diagonal:
        adjoint = _diagonal_adjoint(step, config, params, xs, s_prev, jac, s_bar)
    else:
        adjoint = _affine(DENSE, _later(DENSE.t(jac)), s_bar, reverse=True)
    params_bar, s_prev_bar, xs_bar = jax.vjp(step, params, s_prev, xs)[1](adjoint)
    return params_bar, xs_bar, s_prev_bar[0], None


_solve.defvjp(_solve_fwd, _solve_bwd)


def _diagonal_adjoint(step, config, params, xs, s_prev, diag, s_bar):
    """``l_t = s_bar_t + J_{t+1}^T l_{t+1}`` knowing only ``diag(J)``: each sweep solves the
    diagonal part by a scan and moves the rest, ``J^T l - diag(J) l`` at the last sweep's ``l``
    (one ``jax.vjp``), to the right-hand side; the loop backwards in time where it does not
    converge within ``max_iter`` sweeps."""
    d = _later(diag)
    pullback = jax.vjp(lambda v: step(params, v, xs), s_prev)[1]

    def converged(state):
        _, adjoint, coupled = state
        return _max_abs(adjoint - s_bar - coupled) <= config.tol * _max_abs(adjoint)

    def unfinished(state):
        finite = jnp.all(jnp.isfinite(state[1]))
        return (state[0] <= config.max_iter) & ~converged(state) & finite

    def sweep(state):
        i, adjoint, coupled = state
        adjoint = _affine(DIAGONAL, d, s_bar + coupled - d * _later(adjoint), reverse=True)
        return i + 1, adjoint, _later(pullback(adjoint)[0])  # J_{t+1}^T l_{t+1}

    zeros = jnp.zeros_like(s_bar)  # the first sweep is the diagonal solve
    state = jax.lax.while_loop(unfinished, sweep, (jnp.int32(0), zeros, zeros))
    return jax.lax.cond(
        converged(state) & jnp.all(jnp.isfinite(state[1])),
        lambda: state[1],
        lambda: _sequential_adjoint(step, params, xs, s_prev, s_bar),
    )


def _sequential_adjoint(step, params, xs, s_prev, s_bar):
    """The same adjoint one step after another, backwards in time (``jax.lax.scan``)."""

    def body(adjoint_next, inputs):
        s_prev_next, x_next, s_bar_t = inputs
        pullback = jax.vjp(
            lambda v: step(params, v[None], jax.tree.map(lambda a: a[None], x_next))[0],
            s_prev_next,
        )[1]
        adjoint = s_bar_t + pullback(adjoint_next)[0]
        return adjoint, adjoint

    inputs = (s_prev[1:], jax.tree.map(lambda a: a[1:], xs), s_bar[:-1])
    _, adjoints = jax.lax.scan(body, s_bar[-1], inputs, reverse=True)
    return jnp.concatenate([adjoints, s_bar[-1:]])
