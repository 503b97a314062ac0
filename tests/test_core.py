"""Core behaviour against independent oracles: Python loops, eager execution, per-example runs,
finite differences."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
from jrnn import cells, stack
from jrnn.methods import compiled
from jrnn.methods import scan as scan_path
from jrnn.methods.common import reverse_valid

CELLS = [cells.RNN_TANH, cells.RNN_RELU, cells.LSTM, cells.GRU]
SPECS = [
    jrnn.RNN(3, 5, num_layers=2, bidirectional=True),
    jrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2),
    jrnn.GRU(3, 5, num_layers=2),
]


def python_loop(cell, params, xs, carry, lengths=None, reverse=False):
    """Oracle: one sequence at a time, a Python loop over ``cell.step`` on its valid steps."""
    T, batch = xs.shape[0], xs.shape[1]
    lengths = [T] * batch if lengths is None else [int(n) for n in lengths]
    finals, outputs = [], []
    for b in range(batch):
        c = jax.tree.map(lambda a, b=b: a[b], carry)
        ys = [jnp.zeros(cells.output_size(params))] * T
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            c, ys[t] = cell.step(params, c, xs[t, b])
        finals.append(c)
        outputs.append(jnp.stack(ys))
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), jnp.stack(outputs, axis=1)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, (6, 3, 1)])
def test_scan_equals_python_loop(cell, reverse, lengths):
    key_p, key_x, key_h = jax.random.split(jax.random.key(0), 3)
    params = cell.init(key_p, 4, 5, proj_size=3 if cell is cells.LSTM else 0)
    xs = jax.random.normal(key_x, (6, 3, 4))
    carry = jax.tree.map(
        lambda z: jax.random.normal(key_h, z.shape), cell.zero_carry(params, (3,), jnp.float32)
    )
    lens = None if lengths is None else jnp.array(lengths)
    got = jrnn.scan(cell, params, xs, carry, lengths=lens, reverse=reverse)
    want = python_loop(cell, params, xs, carry, lengths, reverse)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5), got, want)


def test_cell_step_is_a_scan_body():
    params = cells.LSTM.init(jax.random.key(0), 2, 3)
    xs = jax.random.normal(jax.random.key(1), (4, 2))
    carry0 = cells.LSTM.zero_carry(params, (), jnp.float32)
    got = jax.lax.scan(functools.partial(cells.LSTM.step, params), carry0, xs)
    want = jrnn.scan(cells.LSTM, params, xs, carry0)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), got, want)


def test_reverse_valid_reverses_only_the_valid_prefix():
    xs = jnp.arange(5)[:, None] * jnp.ones((1, 3), jnp.int32)  # (T=5, B=3): xs[t, b] = t
    got = reverse_valid(xs, jnp.array([5, 3, 1]))
    want = np.array([[4, 3, 2, 1, 0], [2, 1, 0, 3, 4], [0, 1, 2, 3, 4]]).T
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reverse_valid(got, jnp.array([5, 3, 1])), xs)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_jit_equals_eager(spec):
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 3))
    lengths = jnp.array([6, 4])
    eager = spec.apply(params, x, lengths=lengths)
    jitted = jax.jit(lambda p, x, n: spec.apply(p, x, lengths=n))(params, x, lengths)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), eager, jitted)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_vmap_over_batch_equals_each_example_alone(spec):
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 3))
    batched = spec.apply(params, x)
    per_example = jax.vmap(lambda xi: spec.apply(params, xi), out_axes=(0, 1))(x)
    one = [spec.apply(params, x[b]) for b in range(3)]
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), batched, per_example)
    for b in range(3):
        np.testing.assert_allclose(batched[0][b], one[b][0], atol=1e-6)


def test_vmap_over_params_is_an_ensemble():
    spec = jrnn.GRU(3, 4)
    keys = jax.random.split(jax.random.key(0), 5)
    ensemble = jax.vmap(spec.init)(keys)
    x = jax.random.normal(jax.random.key(1), (2, 6, 3))
    outs, h_n = jax.vmap(spec.apply, in_axes=(0, None))(ensemble, x)
    assert outs.shape == (5, 2, 6, 4) and h_n.shape == (5, 1, 2, 4)
    for i, key in enumerate(keys):
        np.testing.assert_allclose(outs[i], spec.apply(spec.init(key), x)[0], atol=1e-6)


def test_jitted_apply_does_not_recompile():
    spec = jrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    f = jax.jit(lambda p, x, n, key: spec.apply(p, x, lengths=n, dropout_key=key))
    params = spec.init(jax.random.key(0))
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (2, 5, 3))
        f(params, x, jnp.array([5, seed + 1]), jax.random.key(seed))
    assert f._cache_size() == 1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_check_grads_float64(spec):
    with jax.enable_x64(True):
        params = spec.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (2, 4, 3), jnp.float64)

        @jax.jit
        def loss(params, x):
            out, _ = spec.apply(params, x, lengths=jnp.array([4, 2]))
            return jnp.sum(out**2)

        check_grads(loss, (params, x), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-6)


def test_bptt_gradient_is_the_sum_over_time_steps():
    """The gradient of a shared weight is the sum of per-step contributions (the seed's BPTT)."""
    spec = jrnn.RNN(2, 3)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 5, 2))

    def loss(params):
        return jnp.sum(spec.apply(params, x)[0])

    # Unshare W_ih: one copy per step; the shared gradient is the sum of the copies' gradients.
    def unshared(w_steps):
        p = params[0][0]
        h = jnp.zeros((1, 3))
        total = 0.0
        for t in range(5):
            pre = x[:, t] @ w_steps[t].T + h @ p["weight_hh"].T
            h = jnp.tanh(pre + (p["bias_ih"] + p["bias_hh"])[None])
            total = total + jnp.sum(h)
        return total

    w = params[0][0]["weight_ih"]
    per_step = jax.grad(unshared)(jnp.stack([w] * 5))
    shared = jax.grad(loss)(params)[0][0]["weight_ih"]
    np.testing.assert_allclose(shared, per_step.sum(0), atol=1e-5)


def test_dropout_only_with_a_key_and_only_between_layers():
    spec = jrnn.LSTM(3, 64, num_layers=2, dropout=0.5)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 5, 3))
    apply = jax.jit(lambda key: spec.apply(params, x, dropout_key=key))
    plain = spec.apply(params, x)
    np.testing.assert_array_equal(plain[0], jrnn.LSTM(3, 64, num_layers=2).apply(params, x)[0])
    a, b, c = apply(jax.random.key(2)), apply(jax.random.key(2)), apply(jax.random.key(3))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a[0], plain[0]) and not np.allclose(a[0], c[0])
    # The first layer's state is untouched by dropout (it acts on the layer's output only).
    np.testing.assert_allclose(a[1][0][0], plain[1][0][0], atol=1e-6)
    # A one-layer stack has no "between layers": dropout never applies.
    single = jrnn.LSTM(3, 8, dropout=0.5)
    p1 = single.init(jax.random.key(0))
    np.testing.assert_array_equal(
        single.apply(p1, x, dropout_key=jax.random.key(2))[0], single.apply(p1, x)[0]
    )


def test_dropout_rate_and_scaling():
    y = stack.dropout(jax.random.key(0), 0.25, jnp.ones((200, 200)))
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)


def test_stack_with_only_some_layers_bidirectional():
    cell = cells.GRU
    params = stack.init(jax.random.key(0), cell, 3, 4, directions=(2, 1))
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3))
    ys, h_n = stack.apply(cell, params, xs)
    assert ys.shape == (6, 2, 4) and h_n.shape == (3, 2, 4)
    # Oracle: the layers one by one through the single-direction scan.
    _, fwd = jrnn.scan(cell, params[0][0], xs)
    _, bwd = jrnn.scan(cell, params[0][1], xs, reverse=True)
    h_top, top = jrnn.scan(cell, params[1][0], jnp.concatenate([fwd, bwd], -1))
    np.testing.assert_allclose(ys, top, atol=1e-6)
    np.testing.assert_allclose(h_n[2], h_top, atol=1e-6)


def test_shapes_follow_the_seed():
    """x (B, n, w) -> h_{1:n} (B, n, dirs*d); hidden state (dirs*layers, B, d)."""
    for bidirectional in (False, True):
        dirs = 2 if bidirectional else 1
        spec = jrnn.RNN(7, 11, num_layers=3, bidirectional=bidirectional)
        out, h_n = spec.apply(spec.init(jax.random.key(0)), jnp.ones((2, 9, 7)))
        assert out.shape == (2, 9, dirs * 11)
        assert h_n.shape == (dirs * 3, 2, 11)
        # The top layer's forward final state is the output's last step.
        np.testing.assert_allclose(h_n[-dirs], out[:, -1, :11], atol=1e-6)


def test_specs_are_hashable_and_immutable():
    spec = jrnn.LSTM(3, 4, num_layers=2)
    assert hash(spec) == hash(jrnn.LSTM(3, 4, num_layers=2))
    assert spec != jrnn.LSTM(3, 4, num_layers=3)
    with pytest.raises(AttributeError):
        spec.hidden_size = 5


def reference_stack(cell, params, xs, lengths):
    """The plain path: every layer and direction through ``jrnn.scan`` (one ``cell.recur``/step)."""
    finals = []
    for layer in params:
        outputs = []
        for direction, p in enumerate(layer):
            carry, ys = jrnn.scan(cell, p, xs, lengths=lengths, reverse=direction == 1)
            finals.append(carry)
            outputs.append(ys)
        xs = jnp.concatenate(outputs, axis=-1)
    return xs, jax.tree.map(lambda *a: jnp.stack(a), *finals)


@pytest.mark.parametrize("method", ["auto", "scan"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_fast_path_equals_plain_path_with_gradients(cell, method):
    params = stack.init(
        jax.random.key(0), cell, 3, 4, directions=(2, 1), proj_size=2 if cell is cells.LSTM else 0
    )
    xs = jax.random.normal(jax.random.key(1), (7, 3, 3))
    lengths = jnp.array([7, 4, 1])

    def loss(apply, params, xs):
        ys, h_n = apply(params, xs)
        return jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(a**2) for a in jax.tree.leaves(h_n))

    def fast(params, xs):
        return stack.apply(cell, params, xs, lengths=lengths, method=method)

    def plain(params, xs):
        return reference_stack(cell, params, xs, lengths)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, jax.jit(fast)(params, xs), jax.jit(plain)(params, xs))
    jax.tree.map(close, grad(fast, params, xs), grad(plain, params, xs))


@pytest.mark.parametrize("remat", [1, 3, 8])
def test_remat_changes_nothing_but_memory(remat):
    spec = jrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 3))
    lengths = jnp.array([8, 5])

    def loss(params, remat):
        out, (h, c) = spec.apply(params, x, lengths=lengths, remat=remat)
        return jnp.sum(out**2) + jnp.sum(h) + jnp.sum(c)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, grad(params, remat), grad(params, None))


def test_remat_bounds_saved_activations():
    """With remat ~ sqrt(T), the backward pass keeps far fewer activations alive."""
    spec = jrnn.GRU(4, 32)
    params = spec.init(jax.random.key(0))
    x = jnp.zeros((4, 1024, 4))

    def temp_bytes(remat):
        f = jax.jit(jax.grad(lambda p: jnp.sum(spec.apply(p, x, remat=remat)[0])))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(32) < 0.5 * temp_bytes(None)


@pytest.mark.parametrize("method", ["scan", "compiled"])
def test_remat_recomputes_only_when_differentiated(method):
    """Undifferentiated, a remat layer is one pass over all steps (the loops of the compiled
    program are those without remat); differentiated, it runs in chunks; forward-mode
    derivatives (and the scan path's second order) equal those without remat."""
    if method == "compiled" and not compiled.available():
        pytest.skip(compiled.load_error())
    spec = jrnn.GRU(3, 4, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 3))
    lengths = jnp.array([7, 4])

    def run(params, x, remat):
        return spec.apply(params, x, lengths=lengths, method=method, remat=remat)[0]

    def loops(fn):
        return jax.jit(fn).lower(params, x).compile().as_text().count(" while(")

    def grad(remat):
        return jax.grad(lambda p, x: jnp.sum(run(p, x, remat) ** 2), argnums=(0, 1))

    assert loops(functools.partial(run, remat=3)) == loops(functools.partial(run, remat=None))
    assert loops(grad(3)) > loops(grad(None))
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, jax.jit(grad(3))(params, x), jax.jit(grad(None))(params, x))
    if method == "scan":
        tangent = jax.tree.map(jnp.ones_like, params)

        @functools.partial(jax.jit, static_argnums=0)
        def jvp(remat):
            return jax.jvp(lambda p: run(p, x, remat), (params,), (tangent,))

        @functools.partial(jax.jit, static_argnums=0)
        def second(remat):
            inner = jax.grad(lambda x: jnp.sum(run(params, x, remat) ** 2))
            return jax.grad(lambda x: jnp.sum(inner(x) ** 2))(x)

        jax.tree.map(close, jvp(3), jvp(None))

        close(second(3), second(None))


def _scan_unrolls(fn, *args):
    return [
        e.params["unroll"] for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "scan"
    ]


def test_unroll_none_is_chosen_per_backend(monkeypatch):
    spec = jrnn.GRU(3, 4, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jnp.zeros((2, 5, 3))
    assert scan_path.default_unroll() == scan_path.UNROLL.get(jax.default_backend(), 1)
    monkeypatch.setitem(scan_path.UNROLL, jax.default_backend(), 5)

    def run_scan(params, x, **options):
        return spec.apply(params, x, method="scan", **options)[0]

    assert _scan_unrolls(run_scan, params, x) == [5, 5]  # one scan per layer
    assert _scan_unrolls(functools.partial(run_scan, unroll=2), params, x) == [2, 2]
    assert _scan_unrolls(lambda p, x: jrnn.scan(cells.GRU, p, x)[1], params[0][0], x) == [5]


def test_unrolled_scan_changes_nothing():
    spec = jrnn.LSTM(3, 4, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 21, 3))
    lengths = jnp.array([21, 9, 2])

    def loss(params, x, unroll):
        out, (h, c) = spec.apply(params, x, lengths=lengths, unroll=unroll, method="scan")
        return jnp.sum(out * jnp.sin(out)) + jnp.sum(h) + jnp.sum(c)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, grad(params, x, 4), grad(params, x, 1))  # 21 = 5 * 4 + 1: a remainder


def test_forward_mode_autodiff():
    """jax.jvp through the scan path agrees with reverse mode (so jacfwd and hessian work too)."""
    spec = jrnn.GRU(3, 4, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))
    v = jax.random.normal(jax.random.key(2), x.shape)

    def f(x):
        return jnp.sum(spec.apply(params, x, method="scan")[0] ** 2)

    _, forward = jax.jit(lambda x, v: jax.jvp(f, (x,), (v,)))(x, v)
    np.testing.assert_allclose(forward, jnp.vdot(jax.grad(f)(x), v), rtol=1e-4)


def _bf16(a):
    """Round to bfloat16 and back: the operands the mixed-precision matmuls read."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bfloat16_matmuls_equal_a_loop_over_rounded_operands(bidirectional):
    # oracle: a NumPy loop whose matmuls read bf16-rounded operands and sum in float32; the
    # gates and states stay float32, so only the matmul inputs may differ from exact float32
    spec = jrnn.LSTM(3, 8, bidirectional=bidirectional)
    params = spec.init(jax.random.key(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 6, 3)))
    out, (h_n, c_n) = spec.apply(params, x, matmul_dtype=jnp.bfloat16)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    outputs = []
    for d, p in enumerate(params[0]):
        p = {k: np.asarray(v) for k, v in p.items()}
        h, c, ys = np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32), []
        for t in range(6)[:: -1 if d else 1]:
            z = _bf16(x[:, t]) @ _bf16(p["weight_ih"]).T + p["bias_ih"]
            z = z + (_bf16(h) @ _bf16(p["weight_hh"]).T + p["bias_hh"])
            i, f, g, o = np.split(z, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            ys.append(h)
        outputs.append(np.stack(ys[:: -1 if d else 1], axis=1))
        np.testing.assert_allclose(h_n[d], h, atol=2e-6)
        np.testing.assert_allclose(c_n[d], c, atol=2e-6)
    np.testing.assert_allclose(out, np.concatenate(outputs, axis=-1), atol=2e-6)
    exact = spec.apply(params, x)[0]
    assert 1e-4 < float(jnp.abs(out - exact).max()) < 3e-2  # rounded, yet close


def test_bfloat16_matmul_gradients_are_close_to_float32():
    spec = jrnn.GRU(4, 16, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 7, 4))

    def loss(params, x, dtype):
        return jnp.mean(spec.apply(params, x, matmul_dtype=dtype)[0] ** 2)

    exact = jax.grad(loss, argnums=(0, 1))(params, x, None)
    mixed = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, x, jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(mixed), strict=True):
        assert b.dtype == jnp.float32
        assert float(jnp.abs(a - b).max()) <= 2e-2 * float(jnp.abs(a).max())
    for bad in (jnp.int8, "bf16x"):
        with pytest.raises(TypeError, match="matmul_dtype: expected a floating-point dtype"):
            spec.apply(params, x, matmul_dtype=bad)
