"""The cell as the extension point: user cells run on every path with default options.

Oracle: a Python loop over the cell's own ``step``, one sequence, layer and direction at a time,
on each sequence's valid steps only (PyTorch's packed-sequence semantics), differentiated by JAX.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, methods

close = functools.partial(np.testing.assert_allclose, atol=2e-5, rtol=2e-5)


# -- two user cells: one of the gated family, one written directly as the record ----------------

SIN = cells.gated("SIN", 1, lambda gx, gh, h, c: (jnp.sin(gx + gh), None))


def _leaky_init(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=jnp.float32):
    if proj_size:
        raise ValueError(f"proj_size: LEAKY has no projection, got {proj_size}")
    k_w, k_b, k_a = jax.random.split(key, 3)
    bound = 1.0 / math.sqrt(input_size)
    params = {
        "weight_ih": jax.random.uniform(k_w, (hidden_size, input_size), dtype, -bound, bound),
        "decay_logit": jax.random.normal(k_a, (hidden_size,), dtype),
    }
    if bias:
        params["bias_ih"] = jax.random.uniform(k_b, (hidden_size,), dtype, -bound, bound)
    return params


def _leaky_recur(params, h, gx):  # h_t = a * h_{t-1} + (1 - a) * tanh(W x_t + b): diagonal state
    a = jnp.broadcast_to(jax.nn.sigmoid(params["decay_logit"]), h.shape)  # (H,) over the batch
    h = a * h + (1.0 - a) * jnp.tanh(gx)
    return h, h


LEAKY = cells.Cell(
    name="LEAKY",
    init=_leaky_init,
    project=lambda params, x: cells.affine(x, params["weight_ih"], params.get("bias_ih")),
    recur=_leaky_recur,
    zero_carry=lambda params, batch, dtype: jnp.zeros(
        (*batch, params["weight_ih"].shape[0]), dtype
    ),
    output_size=lambda params: params["weight_ih"].shape[0],
)

# LEAKY with the associative form a user adds: a = sigmoid(decay_logit), b = (1 - a) tanh(gx)


def _leaky_coefficients(params, gx):
    a = jnp.broadcast_to(jax.nn.sigmoid(params["decay_logit"]), gx.shape)
    return a, (1.0 - a) * jnp.tanh(gx)


LEAKY_LINEAR = LEAKY._replace(
    name="LEAKY-LINEAR", associative=cells.Linear(coefficients=_leaky_coefficients)
)

# A user's cell that happens to be named like a built-in: an LSTM with a softsign candidate.


def _softsign_lstm(gx, gh, h, c):
    i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jax.nn.soft_sign(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


NAMED_LSTM = cells.gated("LSTM", 4, _softsign_lstm, cell_state=True)


def loop_stack(cell, params, x, lengths):
    """Oracle: `x (B, T, D)` batch first; returns ``(output (B, T, F), h_n leaves (S, B, H))``."""
    outputs, finals = [], []
    for b in range(x.shape[0]):
        n = int(lengths[b])
        seq, states = x[b, :n], []
        for layer in params:
            ys_dirs = []
            for direction, p in enumerate(layer):
                carry = cell.zero_carry(p, (), x.dtype)
                ys = [None] * n
                for t in range(n - 1, -1, -1) if direction else range(n):
                    carry, ys[t] = cell.step(p, carry, seq[t])
                ys_dirs.append(jnp.stack(ys))
                states.append(carry)
            seq = jnp.concatenate(ys_dirs, axis=-1)
        pad = jnp.zeros((x.shape[1] - n, seq.shape[-1]), x.dtype)
        outputs.append(jnp.concatenate([seq, pad]))
        finals.append(jax.tree.map(lambda *a: jnp.stack(a), *states))
    return jnp.stack(outputs), jax.tree.map(lambda *a: jnp.stack(a, axis=1), *finals)


def _loss(output, h_n):
    return jnp.sum(output * jnp.sin(output)) + sum(jnp.sum(a**2) for a in jax.tree.leaves(h_n))


@pytest.mark.parametrize("cell", [SIN, LEAKY, NAMED_LSTM], ids=lambda c: c.name)
def test_user_cell_with_default_options_equals_its_python_loop(cell):
    spec = jrnn.Recurrent(cell, 3, 5, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 3))
    lengths = jnp.array([6, 4, 1])

    def default(params, x):
        return _loss(*spec.apply(params, x, lengths=lengths))

    def oracle(params, x):
        return _loss(*loop_stack(cell, params, x, lengths))

    jax.tree.map(
        close, jax.jit(spec.apply)(params, x, lengths=lengths), loop_stack(cell, params, x, lengths)
    )
    jax.tree.map(close, jax.grad(default, (0, 1))(params, x), jax.grad(oracle, (0, 1))(params, x))


@pytest.mark.parametrize("parallel", [False, True], ids=["in-order", "parallel"])
def test_user_linear_cell_runs_the_associative_path_and_equals_its_python_loop(
    parallel, monkeypatch
):
    # both forms of the associative path: composed in order (CPU) and by associative_scan
    sequential = frozenset() if parallel else frozenset({jax.default_backend()})
    monkeypatch.setattr(methods.associative, "SEQUENTIAL", sequential)
    spec = jrnn.Recurrent(LEAKY_LINEAR, 3, 5, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 3))
    lengths = jnp.array([6, 4, 1])
    assert methods.resolve(LEAKY_LINEAR, params[0], jnp.swapaxes(x, 0, 1), methods.Options()) == (
        "associative"
    )

    def associative(params, x):
        return _loss(*spec.apply(params, x, lengths=lengths, method="associative"))

    def oracle(params, x):
        return _loss(*loop_stack(LEAKY_LINEAR, params, x, lengths))

    jax.tree.map(
        close,
        jax.jit(functools.partial(spec.apply, method="associative"))(params, x, lengths=lengths),
        loop_stack(LEAKY_LINEAR, params, x, lengths),
    )
    jax.tree.map(
        close, jax.grad(associative, (0, 1))(params, x), jax.grad(oracle, (0, 1))(params, x)
    )


def test_user_cell_named_like_a_builtin_never_runs_the_builtin_kernel():
    params = (NAMED_LSTM.init(jax.random.key(0), 3, 8),)
    xs = jnp.ones((4, 2, 3))
    assert NAMED_LSTM.kernel is None
    assert methods.resolve(NAMED_LSTM, params, xs, methods.Options()) == "scan"
    spec = jrnn.Recurrent(NAMED_LSTM, 3, 8)
    hlo = jax.jit(spec.apply).lower(spec.init(jax.random.key(0)), jnp.ones((2, 4, 3))).as_text()
    assert "jrnn_recurrence_fwd" not in hlo
    # the built-in's record with its step replaced keeps kernel="LSTM" but is refused all the same
    impostor = cells.LSTM._replace(recur=NAMED_LSTM.recur)
    with pytest.raises(ValueError, match="not jrnn's built-in cell of that kernel"):
        methods.resolve(impostor, params, xs, methods.Options(method="compiled"))
    assert methods.resolve(impostor, params, xs, methods.Options()) == "scan"


@pytest.mark.skipif(not methods.compiled.available(), reason="compiled library not built")
def test_builtin_cells_resolve_to_the_compiled_path_on_cpu_float32():
    for cell in (cells.RNN_TANH, cells.RNN_RELU, cells.LSTM, cells.GRU):
        params = (cell.init(jax.random.key(0), 3, 4),)
        assert methods.resolve(cell, params, jnp.ones((2, 1, 3)), methods.Options()) == "compiled"


def test_method_compiled_on_a_user_cell_says_why_it_cannot_run():
    sin = jrnn.Recurrent(SIN, 3, 4)
    with pytest.raises(
        ValueError, match="'compiled' cannot run this layer: cell SIN has no compiled"
    ):
        sin.apply(sin.init(jax.random.key(0)), jnp.ones((2, 4, 3)), method="compiled")


def test_options_are_checked_where_they_are_declared():
    spec = jrnn.Recurrent(LEAKY, 3, 4)
    params, x = spec.init(jax.random.key(0)), jnp.ones((2, 4, 3))
    with pytest.raises(TypeError, match=r"kernel: not an option; expected one of \['method'"):
        spec.apply(params, x, kernel=False)
    with pytest.raises(ValueError, match=r"method: expected one of \['auto', 'scan', 'compiled'"):
        spec.apply(params, x, method="fast")
    with pytest.raises(ValueError, match="cell LEAKY has no mixed-precision form"):
        spec.apply(params, x, matmul_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="remat: expected a positive integer, got 0"):
        spec.apply(params, x, remat=0)
    with pytest.raises(TypeError, match=r"cell: expected a jrnn\.cells\.Cell, got str"):
        jrnn.Recurrent("LEAKY", 3, 4)


def test_user_cell_params_and_state_are_checked_from_its_own_init():
    spec = jrnn.Recurrent(LEAKY, 3, 4, num_layers=2)
    params = spec.init(jax.random.key(0))
    x = jnp.ones((2, 5, 3))
    wrong = (params[0], ({**params[1][0], "decay_logit": jnp.zeros(3)},))
    with pytest.raises(
        ValueError, match=r"params: expected layer 1 decay_logit of shape \(4,\), got \(3,\)"
    ):
        spec.apply(wrong, x)
    missing = (params[0], ({"weight_ih": params[1][0]["weight_ih"]},))
    with pytest.raises(ValueError, match="params: expected layer 1 params named"):
        spec.apply(missing, x)
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 2, 4\)"):
        spec.apply(params, x, jnp.zeros((1, 2, 4)))
