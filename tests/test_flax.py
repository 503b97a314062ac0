"""jrnn.flax against Flax itself: conversions of Flax's cells, and the nnx and linen modules.

The oracle for a conversion is the Flax module: each supported cell, nnx and linen, bare (stepped
in a Python loop), in ``RNN`` and in ``Bidirectional``, with every parameter randomised (Flax
starts its biases at zero, which would hide a bias put in the wrong place) and a random initial
carry (which would show a swapped ``(c, h)``). jrnn.flax's modules hold their weights under
``torch.nn``'s names, so ``torch.nn`` checks them directly; Flax's own transforms (``nnx.jit``,
``nnx.vmap``, ``nnx.RNN``, ...) run them.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import jrnn  # noqa: E402
import jrnn.flax  # noqa: E402
from jrnn.flax.convert import from_flax, to_flax  # noqa: E402

B, T, D, H = 3, 5, 4, 6
TOL = 1e-5
LENGTHS = np.array([5, 2, 4])

# Zero initial weights: every test draws its own (and so skips compiling Flax's initialisers).
NNX_ZERO = dict(kernel_init=nnx.initializers.zeros, recurrent_kernel_init=nnx.initializers.zeros)
LINEN_ZERO = dict(kernel_init=nn.initializers.zeros, recurrent_kernel_init=nn.initializers.zeros)
NNX_CELLS = {
    "LSTMCell": lambda seed: nnx.LSTMCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(seed)),
    "OptimizedLSTMCell": lambda seed: nnx.OptimizedLSTMCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(seed)),
    "GRUCell": lambda seed: nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(seed)),
    "SimpleCell": lambda seed: nnx.SimpleCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(seed)),
    "SimpleCell-relu": lambda seed: nnx.SimpleCell(
        D, H, activation_fn=nnx.relu, **NNX_ZERO, rngs=nnx.Rngs(seed)
    ),
}
LINEN_CELLS = {
    "LSTMCell": lambda: nn.LSTMCell(H, **LINEN_ZERO),
    "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(H, **LINEN_ZERO),
    "GRUCell": lambda: nn.GRUCell(H, **LINEN_ZERO),
    "SimpleCell": lambda: nn.SimpleCell(H, **LINEN_ZERO),
    "SimpleCell-relu": lambda: nn.SimpleCell(H, activation_fn=nn.relu, **LINEN_ZERO),
}


def normal(rng, shape):
    return jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float32)


def randomised_nnx(module, seed):
    """``module`` with every ``nnx.Param`` redrawn from N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    pure = jax.tree.map(lambda leaf: normal(rng, leaf.shape), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


def randomised_linen(variables, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: normal(rng, leaf.shape), variables)


def flax_carry(lstm, rng):
    """A random carry in Flax's layout: ``(c, h)`` for an LSTM cell, else ``h``."""
    h = normal(rng, (B, H))
    return (normal(rng, (B, H)), h) if lstm else h


def jrnn_state(lstm, *carries):
    """jrnn's state for Flax carries of each direction: ``(h, c)``, leaves `(dirs, B, H)`."""
    if lstm:
        return jnp.stack([h for _, h in carries]), jnp.stack([c for c, _ in carries])
    return jnp.stack(carries)


def assert_close(got, want, atol=TOL):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


def flax_cell(api, name, seed):
    """A Flax cell; an nnx cell's params are randomised here, a linen cell's by ``converted``."""
    if api == "nnx":
        return randomised_nnx(NNX_CELLS[name](seed), seed)
    return LINEN_CELLS[name]()


def converted(api, module, *init_args):
    """``(run, spec, params)``: ``run`` calls the Flax module, ``from_flax`` converts it."""
    if api == "nnx":
        return module, *from_flax(module)
    variables = randomised_linen(module.init(jax.random.key(0), *init_args), seed=0)
    return functools.partial(module.apply, variables), *from_flax(module, variables)


APIS = ("nnx", "linen")
NAMES = tuple(NNX_CELLS)


# -- from_flax: every supported cell, against Flax ------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", NAMES)
def test_bare_cell_matches_a_loop_over_the_flax_cell(api, name):
    rng = np.random.default_rng(1)
    x = normal(rng, (B, T, D))
    carry = flax_carry("LSTM" in name, rng)
    run, spec, params = converted(api, flax_cell(api, name, 0), carry, x[:, 0])
    assert spec.batch_first and not spec.bidirectional and spec.bias
    outputs, final = [], carry
    for t in range(T):
        final, y = run(final, x[:, t])
        outputs.append(y)
    output, h_n = spec.apply(params, x, jrnn_state("LSTM" in name, carry))
    assert_close(output, jnp.stack(outputs, axis=1))
    assert_close(h_n, jrnn_state("LSTM" in name, final))


@pytest.mark.parametrize(("api", "name"), [("nnx", "LSTMCell"), ("linen", "GRUCell")])
def test_time_major_rnn_matches_flax(api, name):
    rng = np.random.default_rng(2)
    x = normal(rng, (T, B, D))
    carry = flax_carry("LSTM" in name, rng)
    rnn_type = nnx.RNN if api == "nnx" else nn.RNN
    module = rnn_type(flax_cell(api, name, 0), time_major=True, return_carry=True)
    run, spec, params = converted(api, module, x)
    assert not spec.batch_first
    final, outputs = run(x, initial_carry=carry)
    output, h_n = spec.apply(params, x, jrnn_state("LSTM" in name, carry))
    assert_close(output, outputs)
    assert_close(h_n, jrnn_state("LSTM" in name, final))


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", NAMES[:-1])  # relu is SimpleCell's other mapping, tested bare
def test_padded_bidirectional_matches_flax(api, name):
    rng = np.random.default_rng(3)
    x = normal(rng, (B, T, D))
    rnn_type, bidirectional = (
        (nnx.RNN, nnx.Bidirectional) if api == "nnx" else (nn.RNN, nn.Bidirectional)
    )
    rnns = [rnn_type(flax_cell(api, name, seed)) for seed in (0, 1)]
    run, spec, params = converted(api, bidirectional(*rnns, return_carry=True), x)
    assert spec.bidirectional and spec.batch_first
    (forward, backward), outputs = run(x, seq_lengths=jnp.asarray(LENGTHS))
    output, h_n = spec.apply(params, x, lengths=jnp.asarray(LENGTHS))
    for b, length in enumerate(LENGTHS):  # Flax leaves the padding's outputs as they come
        assert_close(output[b, :length], outputs[b, :length])
    assert_close(h_n, jrnn_state("LSTM" in name, forward, backward))


# -- from_flax: what jrnn cannot express ----------------------------------------------------------


def _linen(module, *init_args):
    return module, module.init(jax.random.key(0), *init_args)


def _cell_init_args():
    return jnp.zeros((B, H)), jnp.zeros((B, D))


REFUSALS = {
    "nnx gate_fn": (
        lambda: (nnx.LSTMCell(D, H, **NNX_ZERO, gate_fn=nnx.relu, rngs=nnx.Rngs(0)), None),
        "gate_fn",
    ),
    "nnx activation_fn": (
        lambda: (nnx.GRUCell(D, H, **NNX_ZERO, activation_fn=nnx.relu, rngs=nnx.Rngs(0)), None),
        "activation_fn",
    ),
    "SimpleCell sigmoid": (
        lambda: (
            nnx.SimpleCell(D, H, **NNX_ZERO, activation_fn=nnx.sigmoid, rngs=nnx.Rngs(0)),
            None,
        ),
        "activation_fn",
    ),
    "residual": (
        lambda: (nnx.SimpleCell(D, H, **NNX_ZERO, residual=True, rngs=nnx.Rngs(0)), None),
        "residual",
    ),
    "dtype": (
        lambda: (
            nnx.OptimizedLSTMCell(D, H, **NNX_ZERO, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
            None,
        ),
        "dtype",
    ),
    "promote_dtype": (
        lambda: (
            nnx.GRUCell(D, H, **NNX_ZERO, promote_dtype=lambda args, dtype: args, rngs=nnx.Rngs(0)),
            None,
        ),
        "promote_dtype",
    ),
    "linen carry_init": (
        lambda: _linen(
            nn.GRUCell(H, carry_init=nn.initializers.ones, **LINEN_ZERO), *_cell_init_args()
        ),
        "carry_init",
    ),
    "linen gate_fn": (
        lambda: _linen(nn.GRUCell(H, gate_fn=nn.hard_sigmoid, **LINEN_ZERO), *_cell_init_args()),
        "gate_fn",
    ),
    "reverse-only RNN": (
        lambda: (
            nnx.RNN(nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(0)), reverse=True, keep_order=True),
            None,
        ),
        "reverse",
    ),
    "merge_fn": (
        lambda: (
            nnx.Bidirectional(
                nnx.RNN(nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(0))),
                nnx.RNN(nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(1))),
                merge_fn=lambda a, b: a + b,
            ),
            None,
        ),
        "merge_fn",
    ),
    "mixed directions": (
        lambda: (
            nnx.Bidirectional(
                nnx.RNN(nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(0))),
                nnx.RNN(nnx.LSTMCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(1))),
            ),
            None,
        ),
        "same kind of cell",
    ),
    "unsupported cell": (
        lambda: _linen(nn.MGUCell(H, **LINEN_ZERO), *_cell_init_args()),
        "module: expected",
    ),
    "jrnn cell in nnx.RNN": (
        lambda: (nnx.RNN(jrnn.flax.GRUCell(D, H, rngs=nnx.Rngs(0))), None),
        "module: expected",
    ),
    "not a module": (lambda: (jrnn.GRU(D, H), None), "module: expected"),
    "linen without variables": (lambda: (nn.GRUCell(H), None), "variables"),
    "nnx with variables": (
        lambda: (nnx.GRUCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(0)), {"params": {}}),
        "variables",
    ),
    "variables of another cell": (
        lambda: (
            nn.LSTMCell(H),
            nn.GRUCell(H, **LINEN_ZERO).init(jax.random.key(0), *_cell_init_args()),
        ),
        "variables: expected the params of a linen.LSTMCell",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_from_flax_refuses_what_jrnn_cannot_express(case):
    build, message = REFUSALS[case]
    module, variables = build()
    with pytest.raises((TypeError, ValueError), match=message):
        from_flax(module, variables)


# -- to_flax ----------------------------------------------------------------------------------


ROUND_TRIPS = [
    jrnn.LSTM(D, H),
    jrnn.GRU(D, H, bidirectional=True, batch_first=False),
    jrnn.RNN(D, H, nonlinearity="relu", bias=False, bidirectional=True),
]


@pytest.mark.parametrize("spec", ROUND_TRIPS, ids=str)
def test_to_flax_computes_the_same_and_converts_back(spec):
    params = spec.init(jax.random.key(0))
    if isinstance(spec, jrnn.GRU):  # nnx.GRUCell has no b_hn
        for direction in params[0]:
            direction["bias_hh"] = direction["bias_hh"].at[2 * H :].set(0.0)
    x = normal(np.random.default_rng(4), (B, T, D) if spec.batch_first else (T, B, D))
    module = to_flax(spec, params)
    output, h_n = spec.apply(params, x)
    carry, flax_output = module(x, return_carry=True)
    assert_close(flax_output, output)
    if spec.bidirectional:
        assert_close(h_n, jrnn_state(isinstance(spec, jrnn.LSTM), *carry))
    else:
        assert_close(h_n, jrnn_state(isinstance(spec, jrnn.LSTM), carry))
    back, back_params = from_flax(module)
    assert back == dataclasses.replace(spec, bias=True)
    assert_close(back.apply(back_params, x), (output, h_n))


def test_to_flax_refuses_what_flax_cannot_hold():
    with pytest.raises(ValueError, match="num_layers=1"):
        to_flax(jrnn.GRU(D, H, num_layers=2), jrnn.GRU(D, H, num_layers=2).init(jax.random.key(0)))
    with pytest.raises(ValueError, match="proj_size=0"):
        to_flax(jrnn.LSTM(D, H, proj_size=2), jrnn.LSTM(D, H, proj_size=2).init(jax.random.key(0)))
    with pytest.raises(ValueError, match="b_hn"):
        to_flax(jrnn.GRU(D, H), jrnn.GRU(D, H).init(jax.random.key(0)))
    with pytest.raises(ValueError, match="params: expected"):
        to_flax(jrnn.GRU(D, H), jrnn.LSTM(D, H).init(jax.random.key(0)))


def test_jrnn_from_flax_is_the_converter():
    flax_rnn = nnx.RNN(randomised_nnx(nnx.SimpleCell(D, H, **NNX_ZERO, rngs=nnx.Rngs(0)), 0))
    spec, params = jrnn.from_flax(flax_rnn)
    x = normal(np.random.default_rng(5), (B, T, D))
    assert_close(spec.apply(params, x)[0], flax_rnn(x))
    assert type(jrnn.to_flax(spec, params)) is nnx.RNN


# -- jrnn.flax's nnx modules -----------------------------------------------------------------------


LAYERS = [
    lambda rngs: jrnn.flax.LSTM(D, H, num_layers=2, bidirectional=True, rngs=rngs),
    lambda rngs: jrnn.flax.RNN(D, H, nonlinearity="relu", bias=False, batch_first=False, rngs=rngs),
]


@pytest.mark.parametrize("build", LAYERS, ids=["LSTM", "RNN"])
def test_nnx_layer_is_the_torch_module_with_its_weights(build):
    torch = pytest.importorskip("torch")
    module = build(nnx.Rngs(0))
    spec = module.spec
    state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert set(state) == set(jrnn.to_torch(spec, spec.init(jax.random.key(0))))
    torch_type = {jrnn.LSTM: torch.nn.LSTM, jrnn.GRU: torch.nn.GRU, jrnn.RNN: torch.nn.RNN}
    options = {"nonlinearity": spec.nonlinearity} if isinstance(spec, jrnn.RNN) else {}
    twin = torch_type[type(spec)](
        D, H, num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
        bidirectional=spec.bidirectional, **options,
    )  # fmt: skip
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    x = normal(np.random.default_rng(6), (B, T, D) if spec.batch_first else (T, B, D))
    with torch.no_grad():
        want_output, want_state = twin(torch.from_numpy(np.array(x)))
    output, h_n = module(x)
    assert_close(output, want_output.numpy())
    assert_close(h_n, jax.tree.map(lambda t: t.numpy(), want_state))


def test_nnx_layer_equals_spec_apply_with_the_same_weights():
    spec = jrnn.LSTM(D, H, bidirectional=True)
    params = spec.init(jax.random.key(1))
    module = jrnn.flax.LSTM(D, H, bidirectional=True, rngs=nnx.Rngs(0))
    for name, value in jrnn.to_torch(spec, params).items():
        getattr(module, name)[...] = value
    rng = np.random.default_rng(7)
    x = normal(rng, (B, T, D))
    h0 = normal(rng, (2, B, H)), normal(rng, (2, B, H))
    lengths = jnp.asarray(LENGTHS)
    want = spec.apply(params, x, h0, lengths=lengths, unroll=2)
    assert_close(module(x, h0, lengths=lengths, unroll=2), want)
    assert_close(module.params, params)
    with pytest.raises(TypeError, match="bogus: not an option"):  # options reach spec.apply
        module(x, bogus=1)


def test_recurrent_of_any_cell_is_one_more_layer():
    module = jrnn.flax.Recurrent(jrnn.cells.GRU, D, H, bidirectional=True, rngs=nnx.Rngs(0))
    x = normal(np.random.default_rng(8), (B, T, D))
    assert_close(module(x), jrnn.GRU(D, H, bidirectional=True).apply(module.params, x))


class Summer(nnx.Module):
    """A GRU and a linear read-out of its last output."""

    def __init__(self, rngs):
        self.gru = jrnn.flax.GRU(D, H, rngs=rngs)
        self.head = nnx.Linear(H, 1, rngs=rngs)

    def __call__(self, x):
        output, _ = self.gru(x)
        return self.head(output[:, -1])


def test_nnx_training_loop_lowers_the_loss_and_compiles_once():
    model = Summer(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    x = normal(np.random.default_rng(9), (16, T, D))
    y = jnp.sum(x[:, :, :1], axis=1)  # the sum of the first feature
    traces = 0

    @nnx.jit
    def train_step(model, optimizer, x, y):
        nonlocal traces
        traces += 1
        loss, grads = nnx.value_and_grad(lambda model: jnp.mean((model(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(40)]
    assert traces == 1
    assert losses[-1] < 0.2 * losses[0], losses


def test_nnx_grad_is_jax_grad_of_spec_apply():
    module = jrnn.flax.GRU(D, H, bidirectional=True, rngs=nnx.Rngs(0))
    x = normal(np.random.default_rng(10), (B, T, D))

    def loss(params_or_module):
        output, h_n = (
            params_or_module(x)
            if isinstance(params_or_module, nnx.Module)
            else module.spec.apply(params_or_module, x)
        )
        return jnp.sum(jnp.sin(output)) + jnp.sum(h_n**2)

    grads = nnx.to_pure_dict(nnx.grad(loss)(module))
    want = jrnn.to_torch(module.spec, jax.grad(loss)(module.params))
    assert set(grads) == set(want)
    assert_close([grads[name] for name in sorted(want)], [want[name] for name in sorted(want)])


def test_dropout_in_training_mode_only():
    module = jrnn.flax.GRU(D, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = normal(np.random.default_rng(11), (B, T, D))
    forward = nnx.jit(lambda module, x: module(x)[0])
    plain = module.spec.apply(module.params, x)[0]
    first, second = forward(module, x), forward(module, x)  # training mode: the default
    assert not np.allclose(first, plain) and not np.allclose(first, second)
    module.eval()
    assert_close(forward(module, x), plain)
    module.train()
    assert not np.allclose(forward(module, x), plain)
    assert_close(forward(nnx.view(module, deterministic=True), x), plain)


def test_split_merge_and_an_orbax_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    module = jrnn.flax.GRU(D, H, bidirectional=True, rngs=nnx.Rngs(0))
    x = normal(np.random.default_rng(12), (B, T, D))
    want = module(x)
    graphdef, state = nnx.split(module)
    assert_close(nnx.merge(graphdef, state)(x), want)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(module, nnx.Param))
    checkpointer.wait_until_finished()
    fresh = jrnn.flax.GRU(D, H, bidirectional=True, rngs=nnx.Rngs(1))
    assert not np.allclose(fresh(x)[0], want[0])
    target = nnx.state(nnx.eval_shape(lambda: fresh), nnx.Param)
    nnx.update(fresh, checkpointer.restore(tmp_path / "state", target))
    assert_close(fresh(x), want)


def test_vmap_ensemble_equals_its_members():
    members = [jrnn.flax.GRU(D, H, bidirectional=True, rngs=nnx.Rngs(seed)) for seed in (0, 1)]
    graphdef, _ = nnx.split(members[0])
    states = [nnx.state(member) for member in members]
    ensemble = nnx.merge(graphdef, jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))
    x = normal(np.random.default_rng(13), (B, T, D))
    forward = nnx.jit(lambda member, x: member(x)[0])
    outputs = nnx.jit(nnx.vmap(forward, in_axes=(0, None)))(ensemble, x)
    for member, output in zip(members, outputs, strict=True):
        assert_close(output, forward(member, x))


def test_cells_in_flax_rnn_and_bidirectional():
    rng = np.random.default_rng(14)
    x = normal(rng, (B, T, D))
    cell = jrnn.flax.LSTMCell(D, H, rngs=nnx.Rngs(0))
    h0 = normal(rng, (B, H)), normal(rng, (B, H))  # jrnn's order: (h, c)
    carry, outputs = nnx.RNN(cell, return_carry=True)(x, initial_carry=h0)
    output, h_n = jrnn.LSTM(D, H).apply(((cell.params,),), x, jax.tree.map(lambda a: a[None], h0))
    assert_close(outputs, output)
    assert_close(carry, jax.tree.map(lambda a: a[0], h_n))

    cells = [jrnn.flax.GRUCell(D, H, rngs=nnx.Rngs(seed)) for seed in (1, 2)]
    layer = nnx.Bidirectional(*[nnx.RNN(c) for c in cells], return_carry=True)
    (forward, backward), outputs = layer(x, seq_lengths=jnp.asarray(LENGTHS))
    params = ((cells[0].params, cells[1].params),)
    output, h_n = jrnn.GRU(D, H, bidirectional=True).apply(params, x, lengths=jnp.asarray(LENGTHS))
    for b, length in enumerate(LENGTHS):
        assert_close(outputs[b, :length], output[b, :length])
    assert_close(jnp.stack([forward, backward]), h_n)

    relu = jrnn.flax.RNNCell(D, H, nonlinearity="relu", rngs=nnx.Rngs(3))
    assert relu.initialize_carry((B, D)).shape == (B, H)
    with pytest.raises(ValueError, match="x: expected last axis of size input_size=4"):
        relu(relu.initialize_carry((B, D)), jnp.zeros((B, D + 1)))


# -- jrnn.flax's linen modules ---------------------------------------------------------------------


def test_linen_layer_holds_torch_names_and_runs_the_spec():
    torch = pytest.importorskip("torch")
    module = jrnn.flax.linen.LSTM(D, H, num_layers=2, dropout=0.5, bidirectional=True)
    spec = module.spec
    x = normal(np.random.default_rng(15), (B, T, D))
    variables = module.init(jax.random.key(0), x, deterministic=True)
    params = variables["params"]
    assert set(params) == set(jrnn.to_torch(spec, spec.init(jax.random.key(0))))
    bound = 1 / np.sqrt(H)
    assert all(float(jnp.abs(p).max()) <= bound for p in params.values())  # torch's U(+-1/sqrt(H))
    twin = torch.nn.LSTM(D, H, num_layers=2, dropout=0.5, bidirectional=True, batch_first=True)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    twin.eval()
    with torch.no_grad():
        want_output, want_state = twin(torch.from_numpy(np.array(x)))
    output, h_n = module.apply(variables, x, deterministic=True)
    assert_close(output, want_output.numpy())
    assert_close(h_n, jax.tree.map(lambda t: t.numpy(), want_state))

    dropped, _ = module.apply(
        variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    assert not np.allclose(dropped, output)
    with pytest.raises(ValueError, match="deterministic: expected True"):
        module.apply(variables, x)


# -- without flax ---------------------------------------------------------------------------------


def test_import_jrnn_without_flax():
    code = textwrap.dedent(
        """
        import sys

        class NoFlax:
            def find_spec(self, name, path=None, target=None):
                if name == "flax" or name.startswith("flax."):
                    raise ImportError("flax is hidden")

        sys.meta_path.insert(0, NoFlax())
        import jrnn

        print(jrnn.GRU(2, 3).hidden_size)
        try:
            jrnn.from_flax(None)
        except ImportError as error:
            print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["3", "jrnn.flax needs flax: pip install 'jrnn[flax]'"]
