"""Parity with torch.nn.RNN / LSTM / GRU: outputs, final states and every gradient.

The oracle is PyTorch itself: a module is built in torch, converted with ``jrnn.from_torch``,
and both are run on the same input. Gradients of a random linear functional of (output, h_n)
are compared for the input, ``h0`` and every parameter (mapped back with ``jrnn.to_torch``).
On CPU the default path is the compiled recurrence (``jrnn.methods.compiled``); the padded-sequence
cases run the pure-JAX scan (``method="scan"``) as well.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn

torch = pytest.importorskip("torch")

TOL = 1e-5
B, T, D, H, P = 3, 5, 4, 6, 3
MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def torch_module(mode, **kwargs):
    if mode == "LSTM":
        return torch.nn.LSTM(D, H, **kwargs)
    if mode == "GRU":
        kwargs.pop("proj_size", None)
        return torch.nn.GRU(D, H, **kwargs)
    kwargs.pop("proj_size", None)
    nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
    return torch.nn.RNN(D, H, nonlinearity=nonlinearity, **kwargs)


def run_case(
    mode,
    *,
    num_layers=1,
    bidirectional=False,
    batch_first=True,
    bias=True,
    proj_size=0,
    with_h0=False,
    lengths=None,
    unbatched=False,
    method="auto",
    seed=0,
):
    """Run one configuration in both frameworks; return the worst absolute difference."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    module = torch_module(
        mode,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
        proj_size=proj_size,
    )
    spec, params = jrnn.from_torch(module)
    dirs = 2 if bidirectional else 1
    h_out = proj_size or H
    x_shape = (T, D) if unbatched else ((B, T, D) if batch_first else (T, B, D))
    x = rng.standard_normal(x_shape).astype(np.float32)
    batch = () if unbatched else (B,)
    h0 = None
    if with_h0:
        h0 = rng.standard_normal((num_layers * dirs, *batch, h_out)).astype(np.float32)
        if mode == "LSTM":
            h0 = (h0, rng.standard_normal((num_layers * dirs, *batch, H)).astype(np.float32))

    # Random weights for the loss so that every output element matters.
    out_shape = (*x_shape[:-1], dirs * h_out)
    w_out = rng.standard_normal(out_shape).astype(np.float32)
    w_h = rng.standard_normal((num_layers * dirs, *batch, h_out)).astype(np.float32)
    w_c = rng.standard_normal((num_layers * dirs, *batch, H)).astype(np.float32)

    # --- torch ---
    tx = torch.tensor(x, requires_grad=True)
    th0 = None
    if h0 is not None:
        th0 = (
            tuple(torch.tensor(a, requires_grad=True) for a in h0)
            if mode == "LSTM"
            else torch.tensor(h0, requires_grad=True)
        )
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        tout, thn = module(packed, th0)
        tout, _ = torch.nn.utils.rnn.pad_packed_sequence(
            tout, batch_first=batch_first, total_length=T
        )
    else:
        tout, thn = module(tx, th0)
    th, tc = thn if mode == "LSTM" else (thn, None)
    loss = (tout * torch.tensor(w_out)).sum() + (th * torch.tensor(w_h)).sum()
    if tc is not None:
        loss = loss + (tc * torch.tensor(w_c)).sum()
    loss.backward()

    # --- jrnn ---
    jl = None if lengths is None else jnp.asarray(lengths, jnp.int32)

    def f(params, x, h0):
        out, hn = spec.apply(params, x, h0, lengths=jl, method=method)
        h, c = hn if mode == "LSTM" else (hn, None)
        value = jnp.sum(out * w_out) + jnp.sum(h * w_h)
        if c is not None:
            value = value + jnp.sum(c * w_c)
        return value, (out, h, c)

    grads, (out, h, c) = jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(params, x, h0)
    gparams, gx, gh0 = grads

    worst = 0.0

    def compare(name, ours, theirs):
        nonlocal worst
        theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
        ours = np.asarray(ours)
        assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
        err = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
        assert err <= TOL, f"{name}: max abs error {err:.2e} > {TOL}"
        worst = max(worst, err)

    compare("output", out, tout)
    compare("h_n", h, th)
    if tc is not None:
        compare("c_n", c, tc)
    compare("grad x", gx, tx.grad)
    if h0 is not None:
        if mode == "LSTM":
            compare("grad h0", gh0[0], th0[0].grad)
            compare("grad c0", gh0[1], th0[1].grad)
        else:
            compare("grad h0", gh0, th0.grad)
    named = jrnn.to_torch(spec, gparams)
    torch_grads = {k: v.grad for k, v in module.named_parameters()}
    assert set(named) == set(torch_grads)
    for name, grad in named.items():
        compare(f"grad {name}", grad, torch_grads[name])
    return worst


# The grid: every mode x layers (1-3) x direction; layout, bias and h0 vary across the six cases
# of each mode so that every mode sees both values of each.
GRID = [
    dict(
        mode=mode,
        num_layers=layers,
        bidirectional=bi,
        batch_first=i % 2 == 0,
        bias=i % 3 != 2,
        with_h0=(i // 2) % 2 == 0,
    )
    for mode in MODES
    for i, (layers, bi) in enumerate(itertools.product((1, 2, 3), (False, True)))
]
LENGTHS = [5, 2, 4]  # unsorted, one full-length, one short


def _id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", GRID, ids=_id)
def test_parity_grid(case):
    run_case(**case)


@pytest.mark.parametrize(
    "case",
    [
        dict(mode=m, num_layers=1 + bi, bidirectional=bi, batch_first=bf, with_h0=bf == bi)
        for m, bi, bf in itertools.product(MODES, (False, True), (True, False))
    ],
    ids=_id,
)
@pytest.mark.parametrize("method", ["auto", "scan"])
def test_parity_lengths(case, method):
    run_case(**case, lengths=LENGTHS, method=method)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_parity_lstm_projection(bidirectional, num_layers):
    run_case(
        "LSTM",
        num_layers=num_layers,
        bidirectional=bidirectional,
        proj_size=P,
        with_h0=bidirectional,
        lengths=LENGTHS if num_layers == 2 else None,
    )


@pytest.mark.parametrize("mode", MODES)
def test_parity_unbatched(mode):
    run_case(
        mode, num_layers=2, bidirectional=True, with_h0=mode in ("LSTM", "GRU"), unbatched=True
    )


def test_round_trip_to_torch_and_back():
    """to_torch -> load_state_dict -> from_torch gives back the same params."""
    spec = jrnn.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=P, batch_first=False)
    params = spec.init(jax.random.key(1))
    module = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=P)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in jrnn.to_torch(spec, params).items()})
    spec2, params2 = jrnn.from_torch(module)
    assert spec2 == spec
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_from_torch_rejects_other_modules():
    with pytest.raises(
        TypeError, match=r"module: expected a torch.nn.RNN, LSTM or GRU, got Linear"
    ):
        jrnn.from_torch(torch.nn.Linear(2, 2))


def test_init_distribution_matches_torch():
    """Every parameter is U(-1/sqrt(H), 1/sqrt(H)): same bounds and shapes as torch's init."""
    spec = jrnn.GRU(D, 64, num_layers=2, bidirectional=True)
    ours = jrnn.to_torch(spec, spec.init(jax.random.key(0)))
    theirs = dict(torch.nn.GRU(D, 64, num_layers=2, bidirectional=True).named_parameters())
    assert set(ours) == set(theirs)
    bound = 1 / np.sqrt(64)
    for name, value in ours.items():
        assert value.shape == tuple(theirs[name].shape)
        assert np.abs(value).max() <= bound
        assert np.abs(value).max() > 0.9 * bound  # actually spread over the whole interval
