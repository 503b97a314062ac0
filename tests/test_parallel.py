"""minGRU, minLSTM and LRU: the associative path equals the sequential one and the equations.

Oracle: a plain Python loop in NumPy float64 over each sequence's valid steps, one layer and
direction at a time, every step written from the papers' equations (not from jrnn's cells), and
its gradients by central finite differences. Both jrnn paths (``method="associative"`` and
``method="scan"``) are held to it: outputs, ``h_n`` and the gradients of the input, ``h0`` and
every parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jrnn
from jrnn import cells, diagnostics, methods

close = functools.partial(np.testing.assert_allclose, atol=2e-5, rtol=2e-5)


# -- the equations, one step of one sequence, in NumPy ---------------------------------------------


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def g(v):
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def min_gru_step(p, h, x):
    a = p["weight_ih"] @ x + p["bias_ih"]
    a_z, a_h = a[: h.shape[0]], a[h.shape[0] :]
    z = sigmoid(a_z)
    h = (1 - z) * h + z * g(a_h)
    return h, h


def min_lstm_step(p, h, x):
    a = p["weight_ih"] @ x + p["bias_ih"]
    n = h.shape[0]
    f, i, a_h = sigmoid(a[:n]), sigmoid(a[n : 2 * n]), a[2 * n :]
    h = f / (f + i) * h + i / (f + i) * g(a_h)
    return h, h


def lru_step(p, state, u):
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    b = p["B_re"] + 1j * p["B_im"]
    c = p["C_re"] + 1j * p["C_im"]
    state = lam * state + np.exp(p["gamma_log"]) * (b @ u)
    return state, (c @ state).real + p["D"] * u


STEPS = {"minGRU": min_gru_step, "minLSTM": min_lstm_step, "LRU": lru_step}
SPECS = {"minGRU": jrnn.MinGRU, "minLSTM": jrnn.MinLSTM, "LRU": jrnn.LRU}


def loop_stack(name, params, x, lengths, h0):
    """Oracle: `x (B, T, D)` batch first, `h0 (S, B, N)`; ``(output (B, T, F), h_n (S, B, N))``."""
    step = STEPS[name]
    outputs, finals = [], []
    for b in range(x.shape[0]):
        n = int(lengths[b])
        seq, states, s = x[b, :n], [], 0
        for layer in params:
            ys_dirs = []
            for direction, p in enumerate(layer):
                state, ys = h0[s, b], [None] * n
                for t in range(n - 1, -1, -1) if direction else range(n):
                    state, ys[t] = step(p, state, seq[t])
                ys_dirs.append(np.stack(ys))
                states.append(state)
                s += 1
            seq = np.concatenate(ys_dirs, axis=-1)
        pad = np.zeros((x.shape[1] - n, seq.shape[-1]), seq.dtype)
        outputs.append(np.concatenate([seq, pad]))
        finals.append(np.stack(states))
    return np.stack(outputs), np.stack(finals, axis=1)


def _loss(output, h_n, xp=jnp):  # xp=np for the oracle, in float64
    return xp.sum(output * xp.sin(output)) + xp.sum(xp.abs(h_n) ** 2)


def float64(tree):
    return jax.tree.map(lambda a: np.array(a, np.result_type(a.dtype, np.float64)), tree)


def numeric_grads(loss, args, eps=1e-6):
    """Central differences of ``loss(*args)`` for every entry of every leaf of ``args``; for a
    complex entry ``d/dre - i d/dim``, JAX's convention for the gradient of a real function."""
    leaves = jax.tree.leaves(args)
    grads = [np.zeros_like(leaf) for leaf in leaves]
    for leaf, grad in zip(leaves, grads, strict=True):
        units = (1, -1j) if np.iscomplexobj(leaf) else (1,)
        for index in np.ndindex(leaf.shape):
            original = leaf[index]
            for unit in units:  # the gradient part along ``conj(unit)``
                leaf[index] = original + eps * np.conj(unit)
                up = loss(*args)
                leaf[index] = original - eps * np.conj(unit)
                down = loss(*args)
                grad[index] += unit * (up - down) / (2 * eps)
            leaf[index] = original
    return jax.tree.unflatten(jax.tree.structure(args), grads)


def _spec(name, num_layers, bidirectional, input_size=3, size=4):
    extra = {"r_min": 0.5, "r_max": 0.95} if name == "LRU" else {}
    return SPECS[name](
        input_size, size, num_layers=num_layers, bidirectional=bidirectional, **extra
    )


def _h0(spec, params, batch, key, dtype=jnp.float32):
    shape = jax.eval_shape(lambda: jrnn.stack.zero_state(spec.cell, params, (batch,), dtype))
    h0 = jax.random.normal(key, shape.shape, dtype)
    if jnp.iscomplexobj(shape):
        h0 = h0 + 1j * jax.random.normal(jax.random.fold_in(key, 1), shape.shape, dtype)
    if spec.cell.associative.log_coefficients:  # any sign: log space adds h0 outside the logs
        h0 = h0.at[0].set(-jnp.abs(h0[0]))
    return h0.astype(shape.dtype)


# -- associative == scan == the equations ---------------------------------------------------------

CASES = [  # (cell, layers, bidirectional, lengths): every cell with h0, 1 to 3 layers
    ("minGRU", 1, False, False),
    ("minGRU", 2, True, True),
    ("minLSTM", 3, False, True),
    ("minLSTM", 1, True, True),
    ("LRU", 2, True, True),
    ("LRU", 3, False, True),
]


def _form(monkeypatch, parallel):
    """Make the associative path compose by ``jax.lax.associative_scan`` (``parallel``) or in
    order, whatever this backend does by default."""
    sequential = frozenset() if parallel else frozenset({jax.default_backend()})
    monkeypatch.setattr(methods.associative, "SEQUENTIAL", sequential)


def _close_grads(got, expected):
    """Equal up to float32 rounding relative to the largest entry of each gradient."""
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(got, expected, atol=3e-5 * scale, rtol=3e-5)


@pytest.mark.parametrize(
    "name, num_layers, bidirectional, padded",
    CASES,
    ids=[
        f"{n}-{layers}{'bi' if bi else ''}{'-lengths' if pad else ''}"
        for n, layers, bi, pad in CASES
    ],
)
def test_associative_equals_scan_equals_the_equations(
    name, num_layers, bidirectional, padded, monkeypatch
):
    # the associative path in both of its forms: composed in order (CPU) and by
    # jax.lax.associative_scan (accelerators; in log space for minGRU and minLSTM)
    spec = _spec(name, num_layers, bidirectional)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))
    lengths = jnp.array([5, 2]) if padded else jnp.array([5, 5])
    h0 = _h0(spec, params, 2, jax.random.key(2))

    def oracle(params, x, h0):
        return _loss(*loop_stack(name, params, x, lengths, h0), xp=np)

    args = float64((params, x, h0))
    expected, expected_grads = (
        loop_stack(name, *args[:2], lengths, args[2]),
        numeric_grads(oracle, args),
    )
    for method, parallel in (("associative", False), ("associative", True), ("scan", False)):
        _form(monkeypatch, parallel)

        def loss(params, x, h0, method=method):
            outputs = spec.apply(params, x, h0, lengths=lengths if padded else None, method=method)
            return _loss(*outputs), outputs

        (_, outputs), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
            params, x, h0
        )
        jax.tree.map(close, outputs, expected)
        jax.tree.map(_close_grads, grads, expected_grads)
    if padded:  # outputs past each sequence's end are zero
        assert not np.asarray(outputs[0][1, 2:]).any()


@pytest.mark.parametrize("name", ["minGRU", "minLSTM", "LRU"])
def test_remat_unbatched_and_time_major_agree(name):
    spec = _spec(name, 2, True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 3))
    lengths = jnp.array([9, 5])
    expected = spec.apply(params, x, lengths=lengths, method="scan")
    jax.tree.map(close, spec.apply(params, x, lengths=lengths, method="associative", remat=4),
                 expected)  # fmt: skip
    time_major = SPECS[name](**{**_fields(spec), "batch_first": False})
    out, h_n = time_major.apply(params, jnp.swapaxes(x, 0, 1), method="associative")
    full = spec.apply(params, x, method="scan")
    jax.tree.map(close, (jnp.swapaxes(out, 0, 1), h_n), full)
    out, h_n = spec.apply(params, x[0], method="associative")  # unbatched (T, D)
    jax.tree.map(close, (out, h_n), (full[0][0], full[1][:, 0]))


def _fields(spec):
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


@pytest.mark.parametrize("parallel", [False, True], ids=["in-order", "parallel"])
@pytest.mark.parametrize("name", ["minGRU", "minLSTM", "LRU"])
def test_check_grads_float64(name, parallel, monkeypatch):
    _form(monkeypatch, parallel)
    # one bidirectional layer: the layers above are the same code on another input, and
    # test_associative_equals_scan_equals_the_equations checks 1-3 layers against differences
    with jax.enable_x64(True):
        spec = _spec(name, 1, True)
        params = spec.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
        h0 = _h0(spec, params, 2, jax.random.key(2), jnp.float64)
        lengths = jnp.array([5, 3])

        def loss(params, x, h0):
            return _loss(*spec.apply(params, x, h0, lengths=lengths, method="associative"))

        check_grads(loss, (params, x, h0), order=1, modes=["fwd", "rev"], eps=1e-6,
                    atol=1e-7, rtol=1e-6)  # fmt: skip


def _bf16(a):
    """Round to bfloat16 and back: the operands the mixed-precision matmuls read."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("name", ["minGRU", "minLSTM", "LRU"])
def test_bfloat16_matmuls_on_both_paths_agree_and_stay_close_to_float32(name):
    spec = _spec(name, 2, True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 3))
    lengths = jnp.array([7, 4])

    @functools.partial(jax.jit, static_argnums=(2, 3))
    @functools.partial(jax.grad, argnums=(0, 1), has_aux=True)
    def grads(params, x, method, dtype):
        outputs = spec.apply(params, x, lengths=lengths, method=method, matmul_dtype=dtype)
        return _loss(*outputs), outputs

    exact, exact_outputs = grads(params, x, "scan", None)
    scan, scan_outputs = grads(params, x, "scan", jnp.bfloat16)
    mixed, mixed_outputs = grads(params, x, "associative", jnp.bfloat16)
    jax.tree.map(close, mixed_outputs, scan_outputs)
    jax.tree.map(_close_grads, mixed, scan)
    assert 1e-4 < float(jnp.abs(mixed_outputs[0] - exact_outputs[0]).max()) < 3e-2
    # bf16 operands (8-bit significands) in the forward and the backward matmuls: gradients
    # within 10% of each leaf's largest float32 entry (3-4% seen for minLSTM and the LRU)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(mixed), strict=True):
        assert b.dtype == a.dtype
        assert float(jnp.abs(a - b).max()) <= 0.1 * float(jnp.abs(a).max())
    if name != "LRU":  # oracle: the equations with bf16-rounded matmul operands, one layer
        one = _spec(name, 1, True)
        p1 = one.init(jax.random.key(0))
        out, h_n = one.apply(p1, x, lengths=lengths, matmul_dtype=jnp.bfloat16)
        rounded = jax.tree.map(np.asarray, p1)
        rounded = tuple(tuple({**d, "weight_ih": _bf16(d["weight_ih"])} for d in layer)
                        for layer in rounded)  # fmt: skip
        h0 = np.zeros(h_n.shape, np.float32)
        expected = loop_stack(name, rounded, _bf16(x), np.asarray(lengths), h0)
        jax.tree.map(functools.partial(np.testing.assert_allclose, atol=2e-6), (out, h_n),
                     expected)  # fmt: skip


# -- long sequences: no NaN or Inf with the forget gate near 1 and near 0 --------------------------


def _two_unit_params(name):
    """One layer, D = 1 and two state units: unit 0 forgets almost nothing (its forget factor,
    ``1 - z`` for minGRU, ``f'`` for minLSTM, ``|lam|`` for the LRU, near 1), unit 1 almost
    everything (near 0)."""
    if name == "LRU":
        p = jrnn.LRU(1, 2).init(jax.random.key(0))[0][0]
        radius = jnp.array([1 - 1e-4, 1e-3])
        p = {**p, "nu_log": jnp.log(-jnp.log(radius)), "gamma_log": 0.5 * jnp.log1p(-(radius**2))}
        return ((p,),)
    if name == "minGRU":  # bias of z: very negative keeps h
        weight, bias = jnp.full((4, 1), 0.1), jnp.array([-30.0, 30.0, 0.0, 0.0])
    else:  # f' = f / (f + i) near 1 where a_f >> a_i
        weight, bias = jnp.full((6, 1), 0.1), jnp.array([30.0, -30.0, -30.0, 30.0, 0.0, 0.0])
    return (({"weight_ih": weight, "bias_ih": bias},),)


@pytest.mark.parametrize("parallel", [False, True], ids=["in-order", "parallel"])
@pytest.mark.parametrize("name", ["minGRU", "minLSTM", "LRU"])
def test_no_nan_or_inf_at_100_000_steps_with_forget_factors_near_1_and_0(
    name, parallel, monkeypatch
):
    _form(monkeypatch, parallel)
    steps = 100_000
    spec = SPECS[name](1, 2)
    params = _two_unit_params(name)
    x = jax.random.normal(jax.random.key(1), (1, steps, 1))

    def loss(params, x):
        out, h_n = spec.apply(params, x, method="associative")
        return jnp.mean(out**2) + jnp.sum(jnp.abs(h_n) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(params, x)
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves((value, grads)))
    out = jax.jit(lambda p, x: spec.apply(p, x, method="associative")[0])(params, x)
    expected = jax.jit(lambda p, x: spec.apply(p, x, method="scan")[0])(params, x)
    # float32 sums over memories of up to 10^5 steps, accumulated in two different orders
    np.testing.assert_allclose(out, expected, atol=1e-3, rtol=1e-3)


# -- step by step, ensembles, diagnostics ---------------------------------------------------------


@pytest.mark.parametrize("name", ["minGRU", "minLSTM", "LRU"])
def test_one_step_at_a_time_with_h_n_as_the_next_h0_equals_one_call(name):
    spec = _spec(name, 2, False)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 3))
    out, h_n = spec.apply(params, x, method="associative")
    carry = jrnn.stack.zero_state(spec.cell, params, (2,), jnp.float32)
    one_step, steps = jax.jit(spec.apply), []  # method="auto", as generation runs
    for t in range(x.shape[1]):
        y, carry = one_step(params, x[:, t : t + 1], carry)
        steps.append(y)
    jax.tree.map(close, (jnp.concatenate(steps, axis=1), carry), (out, h_n))
    cell = spec.cell  # and the cell's own step, on the first layer
    state = cell.zero_carry(params[0][0], (2,), jnp.float32)
    for t in range(x.shape[1]):
        state, _ = cell.step(params[0][0], state, x[:, t])
    close(state, h_n[0])


def test_vmap_over_an_ensemble_equals_each_member():
    spec = _spec("LRU", 2, True)
    keys = jax.random.split(jax.random.key(0), 3)
    ensemble = jax.vmap(spec.init)(keys)
    x = jax.random.normal(jax.random.key(1), (2, 8, 3))
    out, h_n = jax.jit(jax.vmap(lambda p: spec.apply(p, x, method="associative")))(ensemble)
    scan = jax.jit(lambda p: spec.apply(p, x, method="scan"))
    for member, key in enumerate(keys):
        jax.tree.map(close, (out[member], h_n[member]), scan(spec.init(key)))


def test_hidden_grads_follow_the_recurrence():
    """dL/dh_t of a loss at the last step shrinks by each later step's forget factor."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 3))
    last = lambda output: jnp.sum(output[:, -1] ** 2)  # noqa: E731

    spec = jrnn.MinGRU(3, 4)
    params = spec.init(jax.random.key(0))
    grads = diagnostics.hidden_grads(spec, params, x, last)[0]  # (T, B, H)
    a = jnp.swapaxes(x, 0, 1) @ params[0][0]["weight_ih"].T + params[0][0]["bias_ih"][None, None]
    forget = 1 - sigmoid(a[..., :4])  # (T, B, H)
    for t in range(5):
        close(grads[t], grads[-1] * jnp.prod(forget[t + 1 :], axis=0))

    spec = jrnn.LRU(3, 4, r_min=0.5, r_max=0.9)
    params = spec.init(jax.random.key(0))
    grads = diagnostics.hidden_grads(spec, params, x, last)[0]  # (T, B, N) complex
    magnitude = jnp.exp(-jnp.exp(params[0][0]["nu_log"]))
    for t in range(5):
        expected = jnp.abs(grads[-1]) * magnitude[None] ** (5 - t)
        close(jnp.abs(grads[t]), expected)
    norms = diagnostics.hidden_grad_norms(spec, params, x, last)
    assert norms.shape == (1, 6) and bool(jnp.isfinite(norms).all())


# -- the path is parallel: no loop over time, gathers independent of T ---------------------------


def _eqns(jaxpr, primitive):
    """The equations of ``jaxpr`` and of the jaxprs inside it that apply ``primitive``."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    found += _eqns(sub, primitive)
    return found


def _ops(spec, steps, primitive):
    params = spec.init(jax.random.key(0))
    x, lengths = jnp.ones((2, steps, 3)), jnp.array([steps, 2])
    jaxpr = jax.make_jaxpr(lambda p, x: spec.apply(p, x, lengths=lengths, method="associative"))
    return _eqns(jaxpr(params, x).jaxpr, primitive)


@pytest.mark.parametrize("parallel", [False, True], ids=["in-order", "parallel"])
@pytest.mark.parametrize("name", ["minGRU", "LRU"])
def test_associative_path_loops_only_over_the_multiply_add_and_gathers_a_fixed_number_of_times(
    name, parallel, monkeypatch
):
    _form(monkeypatch, parallel)
    spec = _spec(name, 1, True)
    assert not _ops(spec, 1024, "while")
    # composed in order: one loop of T steps; in parallel: none
    scans = _ops(spec, 1024, "scan")
    assert [eqn.params["length"] for eqn in scans] == ([] if parallel else [1024])
    if not parallel:  # and the loop does the multiply-add only: gates and readout run outside it
        body = {e.primitive.name for e in scans[0].params["jaxpr"].jaxpr.eqns}
        assert body <= {"mul", "add", "add_any"}, body
    # one gather reverses the inputs of the reverse direction, one its outputs, whatever T
    assert len(_ops(spec, 16, "gather")) == len(_ops(spec, 128, "gather")) == 2


def test_auto_takes_the_associative_path_from_the_measured_length_on(monkeypatch):
    params = (cells.MIN_GRU.init(jax.random.key(0), 3, 4),)

    def resolved(cell, steps):
        xs = jax.ShapeDtypeStruct((steps, 2, 3), jnp.float32)
        return methods.resolve(cell, params, xs, methods.Options())

    backend = jax.default_backend()
    monkeypatch.setitem(methods.associative.MIN_STEPS, backend, 100)
    assert resolved(cells.MIN_GRU, 100) == "associative"
    assert resolved(cells.MIN_GRU, 99) == "scan"
    monkeypatch.setitem(methods.associative.MIN_STEPS, backend, None)  # measured slower
    assert resolved(cells.MIN_GRU, 100_000) == "scan"


# -- errors ---------------------------------------------------------------------------------------


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="state_size: expected a positive integer, got 0"):
        jrnn.LRU(3, 0)
    with pytest.raises(ValueError, match=r"r_min: expected 0 <= r_min < r_max=0.5, got 0.7"):
        jrnn.LRU(3, 4, r_min=0.7, r_max=0.5)
    with pytest.raises(ValueError, match=r"r_min: expected 0 <= r_min < r_max=1.0, got -0.1"):
        jrnn.LRU(3, 4, r_min=-0.1)
    with pytest.raises(ValueError, match=r"r_max: expected r_min=0.0 < r_max <= 1, got 1.5"):
        jrnn.LRU(3, 4, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase: expected a positive number, got 0"):
        jrnn.LRU(3, 4, max_phase=0)
    with pytest.raises(ValueError, match="hidden_size: expected a positive integer, got 0"):
        jrnn.MinGRU(3, 0)
    with pytest.raises(ValueError, match="bias: the LRU has no bias parameters"):
        jrnn.Recurrent(cells.lru(), 3, 4).init(jax.random.key(0))
    with pytest.raises(ValueError, match="proj_size: minLSTM has no projection, got 2"):
        cells.MIN_LSTM.init(jax.random.key(0), 3, 4, proj_size=2)
    for spec in (jrnn.MinGRU(3, 4), jrnn.MinLSTM(3, 4), jrnn.LRU(3, 4)):
        params, x = spec.init(jax.random.key(0)), jnp.ones((2, 5, 3))
        with pytest.raises(ValueError, match=r"x: expected last axis of size input_size=3"):
            spec.apply(params, jnp.ones((2, 5, 4)))
        with pytest.raises(ValueError, match=r"lengths: expected values in \[1, 5\]"):
            spec.apply(params, x, lengths=jnp.array([6, 2]))
        with pytest.raises(ValueError, match=r"h0: expected shape \(1, 2, 4\)"):
            spec.apply(params, x, jnp.zeros((2, 2, 4), spec.apply(params, x)[1].dtype))
        with pytest.raises(ValueError, match=rf"'compiled' cannot run this layer: cell "
                           rf"{spec.cell.name} has no compiled kernel"):  # fmt: skip
            spec.apply(params, x, method="compiled")
    gru = jrnn.GRU(3, 4)
    with pytest.raises(ValueError, match="cell GRU has no associative form"):
        gru.apply(gru.init(jax.random.key(0)), jnp.ones((2, 5, 3)), method="associative")


def test_lru_init_draws_lambda_on_the_ring_and_normalises_the_input():
    spec = jrnn.LRU(64, 4096, r_min=0.4, r_max=0.9, max_phase=math.pi / 4)
    p = spec.init(jax.random.key(0))[0][0]
    radius = jnp.exp(-jnp.exp(p["nu_log"]))
    phase = jnp.exp(p["theta_log"])
    assert bool(((radius >= 0.4) & (radius <= 0.9)).all())
    assert bool(((phase >= 0) & (phase <= math.pi / 4)).all())
    # uniform on the ring's area: the mean of |lam|^2 is the middle of [r_min^2, r_max^2]
    np.testing.assert_allclose(jnp.mean(radius**2), (0.4**2 + 0.9**2) / 2, atol=0.01)
    close(jnp.exp(p["gamma_log"]), jnp.sqrt(1 - radius**2))
    np.testing.assert_allclose(jnp.std(p["B_re"]), 1 / math.sqrt(2 * 64), rtol=0.05)
    np.testing.assert_allclose(jnp.std(p["C_im"]), 1 / math.sqrt(4096), rtol=0.05)


# -- learning: the adding problem -----------------------------------------------------------------


def adding_problem(key, batch, steps):
    """Inputs `(B, T, 2)`: values in [0, 1) and a marker that flags one step in each half;
    target `(B,)`: the sum of the two flagged values."""
    k_v, k_a, k_b = jax.random.split(key, 3)
    values = jax.random.uniform(k_v, (batch, steps))
    first = jax.random.randint(k_a, (batch,), 0, steps // 2)
    second = jax.random.randint(k_b, (batch,), steps // 2, steps)
    marker = jax.nn.one_hot(first, steps) + jax.nn.one_hot(second, steps)
    return jnp.stack([values, marker], axis=-1), jnp.sum(values * marker, axis=1)


@pytest.mark.parametrize("name", ["minGRU", "LRU"])
def test_adding_problem_is_solved(name):
    """Two minGRU layers read the inputs directly; the LRU is linear in its inputs, so (as in the
    paper's blocks) a pointwise ReLU layer comes first to form value * marker."""
    steps, hidden, width = 50, 32, 8
    k_init, k_head, k_enc, k_data = jax.random.split(jax.random.key(0), 4)
    if name == "minGRU":
        spec, width = jrnn.MinGRU(2, hidden, num_layers=2), 2
    else:
        spec = jrnn.LRU(width, hidden, r_min=0.9)
    features = spec.num_directions * spec.output_size
    params = {
        "encoder": jax.random.normal(k_enc, (2, width)) * 0.5,
        "rnn": spec.init(k_init),
        "head": jax.random.normal(k_head, (features,)) * 0.1,
    }

    def loss(params, x, y):
        if name == "LRU":
            x = jax.nn.relu(x @ params["encoder"] - 0.5)
        out, _ = spec.apply(params["rnn"], x)
        return jnp.mean((out[:, -1] @ params["head"] - y) ** 2)

    optimizer = optax.adam(1e-2)

    @jax.jit
    def train_step(params, state, key):
        x, y = adding_problem(key, 64, steps)
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    state = optimizer.init(params)
    for step in range(400):
        params, state, _ = train_step(params, state, jax.random.fold_in(k_data, step))
    x, y = adding_problem(jax.random.key(1), 512, steps)
    assert float(loss(params, x, y)) < 0.01  # predicting the mean scores 1/6
