"""DEER, quasi-DEER and ELK against the scan path (itself tested against Python loops and PyTorch).

The equality cases run a layer of one or two directions with ``lengths`` and a random ``h0`` and
compare outputs, ``h_n`` and the gradients of a loss on both with respect to every parameter,
the input and ``h0``; stacks of layers with dropout run through a spec and
:func:`jrnn.diagnostics.newton`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, diagnostics, stack
from jrnn.methods import Options, Solver, deer
from jrnn.methods.common import valid_mask

NEWTON = ("deer", "quasi-deer", "elk")
BUILTIN = (cells.RNN_TANH, cells.RNN_RELU, cells.LSTM, cells.GRU)
T, B, D, H = 8, 3, 2, 4
LENGTHS = (8, 5, 1)

SIN = cells.gated("SIN", 1, lambda gx, gh, h, c: (jnp.sin(gx + gh), None))


def case(cell, directions, dtype=jnp.float32, steps=T):
    """Stack params, time-major inputs `(steps, B, D)` and a random h0."""
    key_p, key_x, key_h = jax.random.split(jax.random.key(0), 3)
    params = stack.init(key_p, cell, D, H, directions=directions, dtype=dtype)
    xs = jax.random.normal(key_x, (steps, B, D), dtype)
    zeros = stack.zero_state(cell, params, (B,), dtype)
    h0 = jax.tree.map(lambda z: 0.5 * jax.random.normal(key_h, z.shape, dtype), zeros)
    return params, xs, h0


def loss(ys, h_n):
    return jnp.sum(jnp.sin(ys) * ys) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(h_n))


def run(cell, method, params, xs, h0, lengths):
    """Outputs, h_n and the gradient of a loss on both wrt (params, xs, h0), jitted."""

    def value(params, xs, h0):
        ys, h_n = stack.apply(cell, params, xs, h0, lengths=lengths, method=method)
        return loss(ys, h_n), (ys, h_n)

    grad = jax.jit(jax.value_and_grad(value, (0, 1, 2), has_aux=True))
    (_, outputs), grads = grad(params, xs, h0)
    return outputs, grads


@functools.cache
def scanned(cell, directions, dtype=jnp.float32, steps=T):
    """The case and the scan's outputs and gradients on it, computed once."""
    params, xs, h0 = case(cell, directions, dtype, steps)
    lengths = jnp.array(LENGTHS if steps == T else (steps, steps - 2, 1))
    return (params, xs, h0, lengths), run(cell, "scan", params, xs, h0, lengths)


def assert_close(got, want, tol):
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=tol, rtol=tol), got, want)


# each cell with every method on one layer, of two directions or one (a stack of layers is
# test_a_spec_takes_every_option)
LAYERS = {cells.RNN_TANH: (2,), cells.RNN_RELU: (1,), cells.LSTM: (2,), cells.GRU: (1,)}


@pytest.mark.parametrize("method", NEWTON)
@pytest.mark.parametrize("cell", BUILTIN, ids=lambda c: c.name)
def test_outputs_and_gradients_equal_the_scan_float32(cell, method):
    (params, xs, h0, lengths), want = scanned(cell, LAYERS[cell])
    assert_close(run(cell, method, params, xs, h0, lengths), want, 1e-4)


@pytest.mark.parametrize(
    ("cell", "method"), [(cells.GRU, "deer"), (cells.LSTM, "quasi-deer"), (cells.LSTM, "elk")]
)
def test_outputs_and_gradients_equal_the_scan_float64(cell, method):
    with jax.enable_x64(True):
        (params, xs, h0, lengths), want = scanned(cell, (2,), jnp.float64, steps=6)
        assert_close(run(cell, method, params, xs, h0, lengths), want, 1e-8)


@pytest.mark.parametrize("method", ["deer", "quasi-deer"])
def test_a_user_cell_runs_through_its_forward_mode_jacobian(method):
    (params, xs, h0, lengths), want = scanned(SIN, (2,))
    assert_close(run(SIN, method, params, xs, h0, lengths), want, 1e-4)


@pytest.mark.parametrize("cell", BUILTIN, ids=lambda c: c.name)
def test_closed_form_diagonal_of_a_builtin_is_the_diagonal_of_jacfwd(cell):
    """A wrong diagonal would still converge (more slowly), so check it directly: the same cell
    under another name takes the generic paths, jax.jacfwd and one jax.jvp per state entry."""
    params, xs, h0 = case(cell, (1,))
    p = params[0][0]
    layout = deer._Layout.of(h0)
    s_prev = jax.random.normal(jax.random.key(3), (T, *layout.flat(h0)[0].shape))
    inputs = (cell.project(p, xs), valid_mask(jnp.array(LENGTHS), T))
    copy = cell._replace(name="COPY")

    @jax.jit
    def jacobians(p, s_prev, inputs):
        return [deer._jacobian(c, layout, diagonal, p, s_prev, inputs)
                for c, diagonal in ((cell, True), (copy, False), (copy, True))]  # fmt: skip

    closed, dense, generic = jacobians(p, s_prev, inputs)
    assert_close(closed, jnp.diagonal(dense, axis1=-2, axis2=-1), 1e-5)
    assert_close(closed, generic, 1e-5)
    assert bool((closed[T - 1, 1:] == 1).all())  # padding keeps the state


def test_a_spec_takes_every_option():
    spec = jrnn.LSTM(D, H, num_layers=2, bidirectional=True, dropout=0.3, batch_first=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    h0 = tuple(0.1 * jnp.ones((4, B, H)) for _ in range(2))
    options = {"lengths": jnp.array(LENGTHS), "dropout_key": jax.random.key(2)}
    want = spec.apply(params, x, h0, method="scan", **options)
    apply = jax.jit(functools.partial(spec.apply, method="quasi-deer"))
    assert_close(apply(params, x, h0, **options), want, 1e-4)


def test_diagnostics_report_each_layer_and_warm_start_from_the_solution():
    spec = jrnn.GRU(D, H, num_layers=2, dropout=0.2)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (B, 30, D))
    lengths, key = jnp.array([30, 12, 3]), jax.random.key(2)
    newton = jax.jit(functools.partial(diagnostics.newton, spec, method="quasi-deer"))
    out, h_n, stats = newton(params, x, lengths=lengths, dropout_key=key)
    assert_close((out, h_n), spec.apply(params, x, lengths=lengths, dropout_key=key), 1e-4)
    assert len(stats) == 2 and stats[0].states.shape == (30, 1, B, H)
    assert all(0 < int(s.iterations) <= 30 and not bool(s.fell_back) for s in stats)
    assert all(float(s.residual) <= 1e-5 for s in stats)
    *_, warm = newton(params, x, lengths=lengths, dropout_key=key, guess=stats)
    assert [int(s.iterations) for s in warm] == [0, 0]


def test_a_warm_start_at_the_solution_needs_no_iteration_and_keeps_the_gradient():
    """With no iterations left the backward quasi-Newton sweeps cannot converge either, so the
    gradient comes from the backward loop: it must still be the scan's."""
    (params, xs, h0, lengths), (_, want) = scanned(cells.GRU, (1,))
    layer = params[0]
    states = deer.solve(cells.GRU, layer, xs, h0[0:1], lengths=lengths,
                        options=Options(method="quasi-deer"))[2].states  # fmt: skip
    options = Options(method="quasi-deer", solver=Solver(max_iter=0))

    def value(layer, xs, h0):
        ys, h_n, stats = deer.solve(cells.GRU, layer, xs, h0, lengths=lengths, options=options,
                                    guess=states)  # fmt: skip
        return loss(ys, h_n), stats

    grads, stats = jax.jit(jax.grad(value, (0, 1, 2), has_aux=True))(layer, xs, h0)
    assert int(stats.iterations) == 0 and not bool(stats.fell_back)
    assert_close(grads, (want[0][0], want[1], want[2]), 1e-4)


def test_where_plain_newton_fails_elk_converges_and_the_stats_say_which():
    """Recurrent weights 4x PyTorch's: plain Newton overshoots and is still far off after its
    budget, so the layer falls back; ELK's damped steps converge within it."""
    params = stack.init(jax.random.key(0), cells.GRU, 1, 8, directions=(1,))
    params = ((params[0][0] | {"weight_hh": 4 * params[0][0]["weight_hh"]},),)
    xs = jnp.sin(0.2 * jnp.arange(64))[:, None, None] * jnp.ones((1, B, 1))
    xs = xs + 0.1 * jax.random.normal(jax.random.key(1), xs.shape)
    h0 = jnp.zeros((1, B, 8))
    want = stack.apply(cells.GRU, params, xs, h0, method="scan")
    stats = {}
    for method in ("deer", "elk"):
        options = Options(method=method, solver=Solver(max_iter=10))
        solve = jax.jit(functools.partial(deer.solve, cells.GRU, options=options))
        ys, carry, stats[method] = solve(params[0], xs, h0)
        assert_close((ys, carry), want, 1e-4)
    assert bool(stats["deer"].fell_back) and float(stats["deer"].residual) > 1e-2
    assert int(stats["deer"].iterations) == 10
    assert not bool(stats["elk"].fell_back) and float(stats["elk"].residual) <= 1e-5


def test_where_plain_newton_overflows_the_loop_runs_instead():
    """Recurrent weights 10x PyTorch's: the linearised recurrence grows by about |W_hh| per
    step, and over 64 steps the first Newton iterate overflows."""
    params, xs, h0 = case(cells.RNN_TANH, (1,), steps=64)
    params = ((params[0][0] | {"weight_hh": 10 * params[0][0]["weight_hh"]},),)
    options = Options(method="deer", solver=Solver(max_iter=20))
    ys, carry, stats = jax.jit(functools.partial(deer.solve, cells.RNN_TANH, options=options))(
        params[0], xs, h0
    )
    assert_close((ys, carry), stack.apply(cells.RNN_TANH, params, xs, h0, method="scan"), 1e-4)
    assert bool(stats.fell_back) and float(stats.residual) == np.inf
    assert int(stats.iterations) < 20  # it stops at the overflow


def test_a_non_differentiable_step_is_refused_with_the_reason():
    rounded = cells.gated("ROUND", 1, lambda gx, gh, h, c: (jnp.round(gx + gh), None))
    spec = jrnn.Recurrent(rounded, D, H)
    params, x = spec.init(jax.random.key(0)), jnp.ones((B, T, D))
    refused = r"'deer' cannot run this layer: cell ROUND: its new h depends on the carry but has"
    with pytest.raises(ValueError, match=refused + " a zero derivative"):
        spec.apply(params, x, method="deer")
    assert spec.apply(params, x, method="scan")[0].shape == (B, T, H)
    with pytest.raises(ValueError, match="mixed-precision matmul has no forward-mode"):
        jrnn.GRU(D, H).apply(jrnn.GRU(D, H).init(jax.random.key(0)), x, method="elk",
                             matmul_dtype=jnp.bfloat16)  # fmt: skip


def test_a_step_jax_jvp_cannot_differentiate_is_refused():
    @jax.custom_vjp
    def clipped(v):
        return jnp.clip(v, -1, 1)

    clipped.defvjp(lambda v: (clipped(v), v), lambda v, g: (g * (jnp.abs(v) < 1),))
    cell = cells.gated("CLIP", 1, lambda gx, gh, h, c: (clipped(gx + gh), None))
    spec = jrnn.Recurrent(cell, D, H)
    with pytest.raises(ValueError, match=r"cell CLIP: jax\.jvp cannot differentiate its step"):
        spec.apply(spec.init(jax.random.key(0)), jnp.ones((B, T, D)), method="quasi-deer")


def test_solver_controls_are_checked():
    with pytest.raises(ValueError, match="tol: expected a positive number or None, got 0"):
        Solver(tol=0)
    with pytest.raises(ValueError, match=r"max_iter: expected a non-negative integer, got 2\.5"):
        Solver(max_iter=2.5)
    with pytest.raises(ValueError, match="damping: expected a number >= 0 or None, got -1"):
        Solver(damping=-1)
    with pytest.raises(TypeError, match=r"solver: expected a jrnn\.methods\.Solver"):
        Options(solver={"tol": 1e-3})
    params, xs, h0 = case(cells.GRU, (1,))
    with pytest.raises(ValueError, match=r"guess: expected shape \(8, 1, 3, 4\) \(T, k, B, n\)"):
        deer.solve(cells.GRU, params[0], xs, h0, guess=jnp.zeros((9, 3, 4)))
    with pytest.raises(ValueError, match="method: expected one of"):
        deer.solve(cells.GRU, params[0], xs, h0, options=Options(method="scan"))


def test_auto_never_picks_a_newton_method():
    params, xs, _ = case(cells.GRU, (2,))
    assert jrnn.methods.resolve(cells.GRU, params[0], xs, Options()) in ("compiled", "scan")
