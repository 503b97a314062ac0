"""Bad input fails at trace time with an error naming the argument, expected and actual."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jrnn


@pytest.fixture(scope="module")
def lstm():
    spec = jrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    return spec, spec.init(jax.random.key(0))


@pytest.fixture(scope="module")
def gru():
    spec = jrnn.GRU(3, 4, num_layers=2)
    return spec, spec.init(jax.random.key(0))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(nonlinearity="sigmoid"),
            ValueError,
            r"nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'",
        ),
        (dict(num_layers=0), ValueError, r"num_layers: expected a positive integer, got 0"),
        (dict(dropout=1.0), ValueError, r"dropout: expected a number in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), ValueError, r"dropout: expected a number in \[0, 1\), got -0.1"),
        (dict(dropout="0.1"), TypeError, r"dropout: expected a number"),
        (
            dict(proj_size=2),
            ValueError,
            r"proj_size: only LSTM supports a projection, got proj_size=2 for RNN",
        ),
        (dict(hidden_size=0), ValueError, r"hidden_size: expected a positive integer, got 0"),
    ],
)
def test_bad_rnn_constructor(kwargs, error, match):
    args = dict(input_size=3, hidden_size=4) | kwargs
    with pytest.raises(error, match=match):
        jrnn.RNN(**args)


def test_bad_projection():
    with pytest.raises(
        ValueError, match=r"proj_size: expected 0 <= proj_size < hidden_size=4, got 4"
    ):
        jrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"proj_size: only LSTM supports a projection.*for GRU"):
        jrnn.GRU(3, 4, proj_size=2)


def test_wrong_rank(gru):
    spec, params = gru
    with pytest.raises(
        ValueError, match=r"x: expected a 3-D \(batch, time, features\).*got shape \(2, 3, 4, 3\)"
    ):
        spec.apply(params, jnp.zeros((2, 3, 4, 3)))
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        spec.apply(params, jnp.zeros((3,)))


def test_wrong_input_size(gru):
    spec, params = gru
    with pytest.raises(
        ValueError, match=r"x: expected last axis of size input_size=3, got shape \(2, 5, 7\)"
    ):
        spec.apply(params, jnp.zeros((2, 5, 7)))


def test_integer_input(gru):
    spec, params = gru
    with pytest.raises(TypeError, match=r"x: expected a floating-point array, got dtype int32"):
        spec.apply(params, jnp.zeros((2, 5, 3), jnp.int32))


def test_wrong_h0_shape(gru):
    spec, params = gru
    x = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 2, 4\).*got \(1, 2, 4\)"):
        spec.apply(params, x, jnp.zeros((1, 2, 4)))
    # No silent broadcast of a batch-less h0 over the batch.
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 2, 4\).*got \(2, 4\)"):
        spec.apply(params, x, jnp.zeros((2, 4)))


def test_wrong_h0_dtype(gru):
    spec, params = gru
    with pytest.raises(TypeError, match=r"h0: expected dtype float32 like x, got int32"):
        spec.apply(params, jnp.zeros((2, 5, 3)), jnp.zeros((2, 2, 4), jnp.int32))


def test_wrong_lstm_state(lstm):
    spec, params = lstm
    x = jnp.zeros((2, 5, 3))
    with pytest.raises(TypeError, match=r"h0: expected a tuple \(h0, c0\) for LSTM, got ArrayImpl"):
        spec.apply(params, x, jnp.zeros((4, 2, 4)))
    with pytest.raises(ValueError, match=r"c0: expected shape \(4, 2, 4\).*got \(4, 3, 4\)"):
        spec.apply(params, x, (jnp.zeros((4, 2, 4)), jnp.zeros((4, 3, 4))))


def test_bad_lengths(gru):
    spec, params = gru
    x = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\) \(batch,\), got \(3,\)"):
        spec.apply(params, x, lengths=jnp.array([5, 5, 5]))
    with pytest.raises(TypeError, match=r"lengths: expected an integer array, got dtype float32"):
        spec.apply(params, x, lengths=jnp.array([5.0, 2.0]))
    with pytest.raises(
        ValueError, match=r"lengths: expected values in \[1, 5\].*got min 0 and max 5"
    ):
        spec.apply(params, x, lengths=jnp.array([5, 0]))
    with pytest.raises(
        ValueError, match=r"lengths: expected values in \[1, 5\].*got min 2 and max 6"
    ):
        spec.apply(params, x, lengths=jnp.array([6, 2]))
    with pytest.raises(ValueError, match=r"lengths: only batched input takes lengths"):
        spec.apply(params, x[0], lengths=jnp.array([5]))


def test_bad_lengths_fail_at_trace_time_under_jit(gru):
    spec, params = gru
    f = jax.jit(lambda p, x, n: spec.apply(p, x, lengths=n))
    with pytest.raises(TypeError, match=r"lengths: expected an integer array"):
        f(params, jnp.zeros((2, 5, 3)), jnp.array([5.0, 2.0]))


def test_params_of_another_spec(gru, lstm):
    spec, _ = gru
    _, lstm_params = lstm
    with pytest.raises(ValueError, match=r"params: expected 2 layers of 1 direction\(s\) each"):
        spec.apply(lstm_params, jnp.zeros((2, 5, 3)))
    other = jrnn.GRU(5, 4, num_layers=2).init(jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"params: expected layer 0 weight_ih of shape \(12, 3\), got \(12, 5\)"
    ):
        spec.apply(other, jnp.zeros((2, 5, 3)))
