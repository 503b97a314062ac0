"""Tests for jrnn.heads: embedding, linear layers and pooling over time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import heads


def test_embed_looks_up_rows():
    params = heads.embedding_init(jax.random.key(0), 6, 3)
    ids = np.array([[0, 5, 2], [2, 2, 1]])
    out = heads.embed(params, ids)
    w = np.asarray(params["weight"])
    np.testing.assert_array_equal(np.asarray(out), w[ids])
    with pytest.raises(TypeError, match="ids: expected an integer array"):
        heads.embed(params, np.zeros((2, 3), np.float32))


def test_linear_matches_numpy_within_init_bound():
    params = heads.linear_init(jax.random.key(1), 16, 5)
    assert params["weight"].shape == (5, 16) and params["bias"].shape == (5,)
    assert float(jnp.abs(params["weight"]).max()) <= 1 / 4  # U(-1/sqrt(16), 1/sqrt(16))
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    expected = x @ np.asarray(params["weight"]).T + np.asarray(params["bias"])
    np.testing.assert_allclose(np.asarray(heads.linear(params, x)), expected, rtol=1e-5, atol=1e-6)
    no_bias = heads.linear_init(jax.random.key(1), 16, 5, bias=False)
    assert set(no_bias) == {"weight"}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_pool_last_is_each_directions_final_state(bidirectional):
    # oracle: the stack's own h_n (its last layer), which the scan computes independently
    lstm = jrnn.GRU(3, 4, num_layers=2, bidirectional=bidirectional)
    params = lstm.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 3))
    lengths = jnp.array([6, 2, 4])
    out, h_n = lstm.apply(params, x, lengths=lengths)
    pooled = heads.pool(out, lengths, mode="last", num_directions=lstm.num_directions)
    last_layer = h_n[-lstm.num_directions :]  # (dirs, B, H)
    expected = jnp.concatenate(list(last_layer), axis=-1)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pool_mean_max_ignore_padding(mode):
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 1, 3])
    outputs[1, 1:] = 100.0  # padding must not leak into the result
    pooled = np.asarray(heads.pool(jnp.asarray(outputs), jnp.asarray(lengths), mode=mode))
    for b, n in enumerate(lengths):
        reduce = np.mean if mode == "mean" else np.max
        np.testing.assert_allclose(pooled[b], reduce(outputs[b, :n], axis=0), rtol=1e-6)


def test_pool_rejects_bad_arguments():
    outputs, lengths = jnp.zeros((2, 3, 4)), jnp.array([3, 1])
    with pytest.raises(ValueError, match="mode: expected one of"):
        heads.pool(outputs, lengths, mode="first")
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\)"):
        heads.pool(outputs, jnp.array([3]))
    with pytest.raises(ValueError, match="num_directions"):
        heads.pool(jnp.zeros((2, 3, 5)), lengths, num_directions=2)
