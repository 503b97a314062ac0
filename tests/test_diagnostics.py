"""Tests for jrnn.diagnostics: finite differences through a Python loop, and geometric decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, diagnostics, stack

T, B, D, H = 4, 2, 3, 3


def loop_stack(cell, params, xs, delta):
    """Python-loop oracle: the stack over `xs (T, B, D)` with `delta[s, t]` added to h_t of state s.

    Returns the outputs `(T, B, F)` and the last h of every state `(S, B, H_out)`.
    """
    steps = xs.shape[0]
    lasts = []
    s = 0
    for layer in params:
        outputs = []
        for direction, p in enumerate(layer):
            carry = cell.zero_carry(p, xs.shape[1:-1], xs.dtype)
            ys = [None] * steps
            for t in range(steps) if direction == 0 else reversed(range(steps)):
                carry, y = cell.step(p, carry, xs[t])
                ys[t] = y + delta[s, t]
                carry = (ys[t], carry[1]) if isinstance(carry, tuple) else ys[t]
            lasts.append(ys[-1] if direction == 0 else ys[0])
            outputs.append(jnp.stack(ys))
            s += 1
        xs = jnp.concatenate(outputs, axis=-1)
    return xs, jnp.stack(lasts)


def central_differences(f, shape, step=1e-6):
    """`(*shape, *f's output shape)`: d f / d delta[index] for every index of a zero `delta`."""
    basis = jnp.eye(int(np.prod(shape)), dtype=jnp.float64).reshape((-1, *shape))
    diff = jax.jit(jax.vmap(lambda e: (f(step * e) - f(-step * e)) / (2 * step)))(basis)
    return diff.reshape(shape + diff.shape[1:])


# Each case: a model (a spec, or a cell with stack params), its params and a loss over steps.
CASES = {
    "rnn_tanh-last_step": (jrnn.RNN(D, H), None, "last"),
    "lstm_proj_bidirectional_2_layers-mean": (
        jrnn.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=2),
        None,
        "mean",
    ),
    "gru_cell_directions_2_1-last_step": (cells.GRU, (2, 1), "last"),
}


def setup(name):
    """Model, params, cell, time-major `xs`, `x` in the model's layout, and the loss on outputs in
    x's layout (for diagnostics) and on time-major outputs (for the oracle)."""
    key_params, key_x, key_w = jax.random.split(jax.random.key(0), 3)
    model, directions, loss_at = CASES[name]
    if directions is None:
        cell, params = model.cell, model.init(key_params, dtype=jnp.float64)
    else:
        cell = model
        params = stack.init(key_params, cell, D, H, directions=directions, dtype=jnp.float64)
    xs = jax.random.normal(key_x, (T, B, D), jnp.float64)
    batch_first = not isinstance(model, cells.Cell) and model.batch_first

    def swap(a):  # time-major <-> the model's layout (its own inverse)
        return jnp.swapaxes(a, 0, 1) if batch_first else a

    w = jax.random.normal(key_w, (stack.output_features(cell, params),), jnp.float64)

    def loss_fn(output):  # output in x's layout
        per_step = jnp.sum(jnp.sin(swap(output)) @ w, axis=1)  # (T,)
        return per_step[-1] if loss_at == "last" else jnp.mean(per_step)

    return model, params, cell, xs, swap(xs), loss_fn, lambda ys: loss_fn(swap(ys))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hidden_grads_match_finite_differences(name):
    with jax.enable_x64(True):
        model, params, cell, xs, x, loss_fn, loss_time_major = setup(name)
        grads = diagnostics.hidden_grads(model, params, x, loss_fn)
        zero = jnp.zeros((stack.num_states(params), T, B, cells.output_size(params[0][0])))
        assert grads.shape == zero.shape

        ys, _ = jax.jit(loop_stack, static_argnums=0)(cell, params, xs, zero)
        np.testing.assert_allclose(ys, stack.apply(cell, params, xs)[0], rtol=1e-12)
        fd = central_differences(
            lambda delta: loss_time_major(loop_stack(cell, params, xs, delta)[0]), zero.shape
        )
        np.testing.assert_allclose(grads, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hidden_jacobians_match_finite_differences(name):
    with jax.enable_x64(True):
        model, params, cell, xs, x, _, _ = setup(name)
        jacobians = diagnostics.hidden_jacobians(model, params, x)
        s, h_out = stack.num_states(params), cells.output_size(params[0][0])
        assert jacobians.shape == (s, T, B, h_out, h_out)

        # fd[s, t, b, j, s2, b2, i] = d last_h[s2, b2, i] / d delta[s, t, b, j]
        fd = central_differences(
            lambda delta: loop_stack(cell, params, xs, delta)[1], (s, T, B, h_out)
        )
        own = np.einsum("stbjsbi->stbij", np.asarray(fd))  # the same state and example
        np.testing.assert_allclose(jacobians, own, rtol=1e-6, atol=1e-9)
        # A direction's last state is its last step's h: an identity Jacobian there.
        directions = [d for layer in params for d in range(len(layer))]
        for state, direction in enumerate(directions):
            last = T - 1 if direction == 0 else 0
            identity = np.broadcast_to(np.eye(h_out), (B, h_out, h_out))
            np.testing.assert_allclose(jacobians[state, last], identity, atol=1e-12)


def test_norms_summarise_grads_and_jacobians():
    with jax.enable_x64(True):
        model, params, _, _, x, loss_fn, _ = setup("gru_cell_directions_2_1-last_step")
        grads = diagnostics.hidden_grads(model, params, x, loss_fn)
        norms = diagnostics.hidden_grad_norms(model, params, x, loss_fn)
        np.testing.assert_allclose(norms, np.linalg.norm(grads, axis=(2, 3)), rtol=1e-12)
        jacobians = np.asarray(diagnostics.hidden_jacobians(model, params, x))
        singular = np.linalg.svd(jacobians, compute_uv=False)  # (S, T, B, H_out)
        expected = singular[..., 0].mean(axis=2)
        np.testing.assert_allclose(
            diagnostics.jacobian_norms(model, params, x), expected, rtol=1e-10
        )


def small_tanh_rnn(key, steps, batch, hidden, scale, input_scale):
    """A tanh RNN with ``weight_hh = scale * Q`` (Q orthogonal), no bias; inputs `(T, B, 2)`."""
    k_q, k_ih, k_x = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k_q, (hidden, hidden), jnp.float64))
    params = {
        "weight_ih": input_scale * jax.random.normal(k_ih, (hidden, 2), jnp.float64),
        "weight_hh": scale * q,
    }
    return params, jax.random.normal(k_x, (steps, batch, 2), jnp.float64)


def test_tanh_rnn_decays_at_the_rate_of_the_per_step_jacobians():
    steps, batch, hidden, scale = 16, 3, 4, 0.6
    with jax.enable_x64(True):
        params, xs = small_tanh_rnn(jax.random.key(1), steps, batch, hidden, scale, 0.03)
        model, stack_params = cells.RNN_TANH, ((params,),)
        _, hs = jrnn.scan(model, params, xs)

        # Per-step Jacobians dh_k/dh_{k-1}, straight from jax.jacobian of one cell step.
        h_prev = jnp.concatenate([jnp.zeros((1, batch, hidden)), hs[:-1]])
        one_step = jax.jacobian(lambda h, x: model.step(params, h, x)[0])
        per_step = jax.vmap(jax.vmap(one_step))(h_prev, xs)  # (T, B, H, H)
        singular = np.linalg.svd(np.asarray(per_step), compute_uv=False)

        def product_after(values):  # [t] = prod over k = t+1 .. T-1 of values[k], per example
            tail = np.cumprod(values[:0:-1], axis=0)[::-1]
            return np.concatenate([tail, np.ones((1, batch))])

        upper, lower = product_after(singular[..., 0]), product_after(singular[..., -1])
        jacobians = np.asarray(diagnostics.hidden_jacobians(model, stack_params, xs))[0]
        measured = np.linalg.svd(jacobians, compute_uv=False)[..., 0]  # (T, B)
        assert np.all(measured <= upper * (1 + 1e-9))
        assert np.all(measured >= lower * (1 - 1e-9))
        # The bounds are tight here (small states, tanh' ~ 1), so the decay is geometric...
        assert np.all(upper / lower < 1.3)
        distance = np.arange(steps)[::-1]
        rate = np.exp(np.polyfit(distance, np.log(measured.mean(axis=1)), 1)[0])
        assert rate == pytest.approx(scale, rel=0.03)
        assert measured[0].mean() < 1e-2 * measured[-2].mean()

        # ... and the loss gradient follows: dL/dh_t = (dL/dh_{T-1}) (dh_{T-1}/dh_t).
        v = jnp.arange(1.0, hidden + 1.0)
        grads = diagnostics.hidden_grads(
            model, stack_params, xs, lambda out: jnp.mean(out[-1] @ v)
        )[0]
        grad_norms = np.linalg.norm(grads, axis=-1)  # (T, B)
        scale_last = np.linalg.norm(v) / batch
        assert np.all(grad_norms <= scale_last * upper * (1 + 1e-9))
        assert np.all(grad_norms >= scale_last * lower * (1 - 1e-9))


def test_tanh_rnn_at_rest_decays_exactly_as_scale_to_the_distance():
    steps, batch, hidden, scale = 12, 2, 4, 0.7
    with jax.enable_x64(True):
        params, xs = small_tanh_rnn(jax.random.key(2), steps, batch, hidden, scale, 0.3)
        xs = jnp.zeros_like(xs)  # h stays 0, so every step's Jacobian is exactly scale * Q
        model, stack_params = cells.RNN_TANH, ((params,),)
        distance = np.arange(steps)[::-1]
        norms = diagnostics.jacobian_norms(model, stack_params, xs)[0]
        np.testing.assert_allclose(norms, scale**distance, rtol=1e-10)
        grad_norms = diagnostics.hidden_grad_norms(
            model, stack_params, xs, lambda out: jnp.sum(jnp.sin(out[-1] + 1.0))
        )[0]
        np.testing.assert_allclose(grad_norms / grad_norms[-1], scale**distance, rtol=1e-10)


def test_state_labels():
    params = stack.init(jax.random.key(0), cells.GRU, 2, 3, directions=(2, 1))
    assert diagnostics.state_labels(params) == ("layer 0 forward", "layer 0 reverse", "layer 1")


def test_bad_input_names_the_argument():
    spec = jrnn.GRU(D, H)
    params = spec.init(jax.random.key(0))
    x = jnp.ones((B, T, D))
    with pytest.raises(TypeError, match=r"model: expected a jrnn spec"):
        diagnostics.jacobian_norms("gru", params, x)
    with pytest.raises(ValueError, match=r"x: expected a batched 3-D array, got shape \(4, 3\)"):
        diagnostics.jacobian_norms(spec, params, x[0])
    with pytest.raises(ValueError, match="params: expected"):
        diagnostics.jacobian_norms(jrnn.GRU(D, H, bidirectional=True), params, x)
