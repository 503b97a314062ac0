"""Property tests with hypothesis: every cell family's spec over random configurations.

A configuration draws the batch (or none: unbatched), the length ``T`` and per-sequence
lengths in ``[1, T]`` (1 and ``T`` included), the sizes, layers, directions, ``batch_first``,
``h0`` or none, bias or none, ``proj_size`` (LSTM), the nonlinearity (RNN) and the method.
For each one ``spec.apply`` is held, in outputs and final states, to a Python loop over
``spec.cell.step``; and in the gradients of a random linear function of both with respect to
the params, ``x`` and ``h0``, to ``torch.nn`` (through ``jrnn.to_torch``) for the families
PyTorch has, to the loop for the others. A family is one entry of :data:`FAMILIES`.

The examples are the same every run (a fixed seed per family and direction setting) and bounded
by ``Family.examples``;
the shapes are small, of few distinct sizes, and compiled without LLVM's optimisations, as
every example compiles.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import jrnn

torch = pytest.importorskip("torch")

TOL = {"atol": 2e-5, "rtol": 1e-4}


class Family(NamedTuple):
    """A cell family: how to build its spec, and its ``torch.nn`` twin if there is one."""

    make: Callable[..., Any]  # (D, H, proj_size, **the spec's other options) -> spec
    torch_module: str | None  # the torch.nn class of the same numerics, or None
    projection: bool = False  # whether proj_size applies
    bias: bool = True  # whether the spec takes bias
    positive_state: bool = False  # h0 > 0 (the minimal cells' log-space form needs it)
    nonlinearity: bool = False  # whether it takes tanh or relu
    examples: int = 6  # hypothesis max_examples, for each direction setting


FAMILIES = {
    "RNN": Family(lambda d, h, proj, **kw: jrnn.RNN(d, h, **kw), "RNN", nonlinearity=True),
    "LSTM": Family(lambda d, h, proj, **kw: jrnn.LSTM(d, h, proj_size=proj, **kw), "LSTM", True),
    "GRU": Family(lambda d, h, proj, **kw: jrnn.GRU(d, h, **kw), "GRU", examples=5),
}
if hasattr(jrnn, "MinGRU"):  # the linear families: no torch twin, held to the Python loop
    FAMILIES |= {
        "MinGRU": Family(
            lambda d, h, proj, **kw: jrnn.MinGRU(d, h, **kw), None, positive_state=True, examples=3
        ),
        "MinLSTM": Family(
            lambda d, h, proj, **kw: jrnn.MinLSTM(d, h, **kw), None, positive_state=True, examples=3
        ),
        "LRU": Family(
            lambda d, h, proj, bias, **kw: jrnn.LRU(d, h, **kw), None, bias=False, examples=3
        ),
    }
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class Case(NamedTuple):
    spec: Any
    params: Any
    x: np.ndarray  # in the spec's layout
    h0: Any  # None, or h_n's structure
    lengths: np.ndarray | None  # (B,)
    method: str
    weights: Any  # the random linear function's weights: (for output, for h_n)


def _random_like(rng: np.random.Generator, like: Any, positive: bool) -> Any:
    def draw(leaf):
        shape, dtype = leaf.shape, np.dtype(leaf.dtype)
        real = rng.uniform(0.1, 1.0, shape) if positive else rng.standard_normal(shape)
        if np.issubdtype(dtype, np.complexfloating):
            real = (real + 1j * rng.standard_normal(shape)) * 0.5
        return np.asarray(real, dtype)

    return jax.tree.map(draw, like)


@st.composite
def cases(draw: Callable, family: Family, bidirectional: bool) -> Case:
    # padded sequences (lengths) half the time, else a dense batch or one unbatched sequence
    kind = draw(st.sampled_from(["lengths", "dense", "lengths", "unbatched"]))
    unbatched = kind == "unbatched"
    batch = () if unbatched else (draw(st.integers(1, 2)),)
    steps = draw(st.integers(2 if kind == "lengths" else 1, 5))  # padding needs T > 1
    # few distinct sizes (the extremes 1 and a few): eager ops compile once per shape
    d, h = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 4]))
    kwargs = {
        "num_layers": draw(st.integers(1, 2)),
        "bidirectional": bidirectional,
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()) if family.bias else True,
    }
    if family.nonlinearity:
        kwargs["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    proj = draw(st.integers(0, h - 1)) if family.projection else 0
    spec = family.make(d, h, proj, **kwargs)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # params of init's structure, drawn in NumPy (jax.random compiles anew for every shape)
    shapes = jax.eval_shape(spec.init, jax.random.key(0))
    params = jax.tree.map(lambda a: rng.uniform(-1, 1, a.shape).astype(a.dtype), shapes)
    x_shape = (steps, d) if unbatched else (*batch, steps, d)
    if not unbatched and not spec.batch_first:
        x_shape = (steps, *batch, d)
    x = rng.standard_normal(x_shape).astype(np.float32)
    lengths = None
    if kind == "lengths":  # drawn from 1, T and one in between: the edges of packing
        pool = [1, steps, draw(st.integers(1, steps))]
        lengths = np.asarray(draw(st.permutations(pool))[: batch[0]], np.int32)
    out_shape, h_shape = jax.eval_shape(functools.partial(spec.apply, params), x)
    h0 = _random_like(rng, h_shape, family.positive_state) if draw(st.booleans()) else None
    weights = _random_like(rng, (out_shape, h_shape), positive=False)
    method = draw(st.sampled_from(["auto", "scan"]))
    return Case(spec, params, x, h0, lengths, method, weights)


def _objective(output: Any, h_n: Any, weights: Any) -> jax.Array:
    """A random linear function of the output and the final state (real parts)."""
    pairs = zip(jax.tree.leaves((output, h_n)), jax.tree.leaves(weights), strict=True)
    return sum(jnp.sum(jnp.real(a * w)) for a, w in pairs)


@functools.cache
def _step(cell: jrnn.Cell) -> Callable:
    """``cell.step``, jitted: compiled once per shape rather than op by op."""
    return jax.jit(cell.step)


def loop_oracle(spec: Any, params: Any, x: Any, h0: Any, lengths: Any) -> tuple[Any, Any]:
    """A Python loop over ``spec.cell.step``: each sequence, layer and direction on its own,
    on its valid steps only; outputs past a sequence's end are zero. Same layouts as
    ``spec.apply``. (Every array it makes is one step's, so that its ops compile for few
    shapes.)"""
    step = _step(spec.cell)
    unbatched = x.ndim == 2
    xb = x[None] if unbatched else (x if spec.batch_first else jnp.swapaxes(x, 0, 1))
    h0b = None if h0 is None else jax.tree.map(lambda a: a[:, None] if unbatched else a, h0)
    batch, steps = xb.shape[0], xb.shape[1]
    xs = [jnp.unstack(row) for row in jnp.unstack(xb)]  # xs[b][t]: (D,)
    if h0b is not None:  # h0s[i][b]: layer-direction i's initial carry of sequence b
        leaves, tree = jax.tree.flatten(h0b)
        split = [[jnp.unstack(row) for row in jnp.unstack(leaf)] for leaf in leaves]
        h0s = [[tree.unflatten([s[i][b] for s in split]) for b in range(batch)]
               for i in range(len(split[0]))]  # fmt: skip
    outputs, finals = [], []
    for b in range(batch):
        n = steps if lengths is None else int(lengths[b])
        seq, states = xs[b][:n], []
        for layer, directions in enumerate(params):
            ys_dirs = []
            for direction, p in enumerate(directions):
                if h0b is None:
                    carry = spec.cell.zero_carry(p, (), xb.dtype)
                else:
                    carry = h0s[layer * len(directions) + direction][b]
                ys = [None] * n
                for t in range(n - 1, -1, -1) if direction else range(n):
                    carry, ys[t] = step(p, carry, seq[t])
                ys_dirs.append(ys)
                states.append(carry)
            seq = [jnp.concatenate(ys_t) for ys_t in zip(*ys_dirs, strict=True)]
        padding = [jnp.zeros_like(seq[0])] * (steps - n)
        outputs.append(jnp.stack(seq + padding))
        finals.append(jax.tree.map(lambda *a: jnp.stack(a), *states))
    output = jnp.stack(outputs)
    h_n = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *finals)
    if unbatched:
        return output[0], jax.tree.map(lambda a: a[:, 0], h_n)
    return (output if spec.batch_first else jnp.swapaxes(output, 0, 1)), h_n


def _close(got: Any, want: Any, what: str) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL, err_msg=what)


def _jrnn_run(case: Case) -> tuple[Any, Any, Any]:
    """``(output, h_n)`` and the gradients ``(params, x, h0)`` of the objective, jitted."""

    def f(params, x, h0):
        output, h_n = case.spec.apply(params, x, h0, lengths=case.lengths, method=case.method)
        return _objective(output, h_n, case.weights), (output, h_n)

    args = (case.params, case.x, case.h0)
    step = jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True)).lower(*args)
    grads, results = step.compile(FAST_COMPILE)(*args)
    return results, grads


def _check_against_the_loop(case: Case, results: Any, grads: Any, *, gradients: bool) -> None:
    def oracle(params, x, h0):
        output, h_n = loop_oracle(case.spec, params, x, h0, case.lengths)
        return _objective(output, h_n, case.weights), (output, h_n)

    args = (case.params, case.x, case.h0)
    if not gradients:
        _close(results, oracle(*args)[1], "output, h_n vs the loop")
        return
    want_grads, want = jax.grad(oracle, argnums=(0, 1, 2), has_aux=True)(*args)
    _close(results, want, "output, h_n vs the loop")
    _close(grads, want_grads, "gradients vs the loop")  # conjugated alike for complex h0


def _check_against_torch(case: Case, family: Family, results: Any, grads: Any) -> None:
    spec = case.spec
    kwargs = dict(num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
                  bidirectional=spec.bidirectional)  # fmt: skip
    if family.torch_module == "RNN":
        kwargs["nonlinearity"] = spec.nonlinearity
    if family.projection:
        kwargs["proj_size"] = spec.proj_size
    module = getattr(torch.nn, family.torch_module)(spec.input_size, spec.hidden_size, **kwargs)
    state = jrnn.to_torch(spec, case.params)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    tx = torch.tensor(case.x, requires_grad=True)
    th0 = None if case.h0 is None else jax.tree.map(
        lambda a: torch.tensor(np.asarray(a), requires_grad=True), case.h0
    )  # fmt: skip
    if case.lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.tensor(case.lengths), batch_first=spec.batch_first, enforce_sorted=False
        )
        out, h_n = module(packed, th0)
        out = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=spec.batch_first, total_length=tx.shape[1 if spec.batch_first else 0]
        )[0]
    else:
        out, h_n = module(tx, th0)
    weights = jax.tree.map(lambda w: torch.tensor(np.asarray(w)), case.weights)
    pairs = zip(jax.tree.leaves((out, h_n)), jax.tree.leaves(weights), strict=True)
    sum((a * w).sum() for a, w in pairs).backward()
    _close(results, jax.tree.map(lambda t: t.detach().numpy(), (out, h_n)), "vs torch")
    g_params, g_x, g_h0 = grads
    named, torch_grads = jrnn.to_torch(spec, g_params), dict(module.named_parameters())
    assert set(named) == set(torch_grads)
    for name, grad in named.items():
        _close(grad, torch_grads[name].grad.numpy(), f"gradient of {name} vs torch")
    _close(g_x, tx.grad.numpy(), "x gradient vs torch")
    if th0 is not None:
        _close(g_h0, jax.tree.map(lambda t: t.grad.numpy(), th0), "h0 gradient vs torch")


def _property(name: str, bidirectional: bool) -> Callable[[], None]:
    family = FAMILIES[name]

    @seed(zlib.crc32(f"{name} {bidirectional}".encode()))  # fixed, and its own for each entry
    @settings(max_examples=family.examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(case=cases(family, bidirectional))
    def check(case: Case) -> None:
        results, grads = _jrnn_run(case)
        _check_against_the_loop(case, results, grads, gradients=family.torch_module is None)
        if family.torch_module is not None:
            _check_against_torch(case, family, results, grads)

    return check


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_apply_equals_its_python_loop_and_torch(name, bidirectional):
    _property(name, bidirectional)()
