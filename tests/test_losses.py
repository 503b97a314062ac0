"""Tests for jrnn.losses: masked cross-entropy, accuracy, perplexity, bits per character."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jrnn import losses


def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(4, 7))
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).reshape(-1, 5), torch.from_numpy(targets).reshape(-1)
    )
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(float(got), expected.item(), rtol=1e-5)


def test_masked_loss_equals_unpadded_sequences_one_by_one():
    rng = np.random.default_rng(1)
    lengths = [5, 2, 4]
    seqs = [rng.normal(size=(n, 6)).astype(np.float32) for n in lengths]
    tgts = [rng.integers(0, 6, size=n) for n in lengths]
    logits = np.full((3, 5, 6), 1e3, np.float32)  # padding: absurd values that must not count
    targets = np.zeros((3, 5), np.int64)
    for b, (s, t) in enumerate(zip(seqs, tgts, strict=True)):
        logits[b, : len(t)], targets[b, : len(t)] = s, t
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]
    batch = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), mask))
    # one sequence at a time: the seed's 1/n * sum_t, then weighted by each length
    per_seq = [
        float(losses.cross_entropy(jnp.asarray(s), jnp.asarray(t)))
        for s, t in zip(seqs, tgts, strict=True)
    ]
    expected = sum(loss * n for loss, n in zip(per_seq, lengths, strict=True)) / sum(lengths)
    np.testing.assert_allclose(batch, expected, rtol=1e-5)
    # and a single sequence's loss is the plain mean of -log p over its steps
    log_p = seqs[1] - np.log(np.exp(seqs[1]).sum(-1, keepdims=True))
    np.testing.assert_allclose(per_seq[1], -log_p[np.arange(2), tgts[1]].mean(), rtol=1e-5)


def test_gradient_is_softmax_minus_onehot_over_valid_steps():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, 4, size=(2, 3)))
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
    grad = jax.grad(losses.cross_entropy)(logits, targets, mask)
    expected = (jax.nn.softmax(logits) - jax.nn.one_hot(targets, 4)) * mask[..., None] / 3
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-5, atol=1e-7)


def test_accuracy_counts_valid_positions_only():
    logits = jnp.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])  # predicts 1, 0, 0
    targets = jnp.array([[1, 1, 1]])
    assert float(losses.accuracy(logits, targets)) == pytest.approx(1 / 3)
    assert float(losses.accuracy(logits, targets, jnp.array([[True, False, False]]))) == 1.0
    assert float(losses.accuracy(logits, targets, jnp.zeros((1, 3), bool))) == 0.0


def test_perplexity_and_bits_per_char():
    assert float(losses.perplexity(math.log(7.0))) == pytest.approx(7.0)
    assert float(losses.bits_per_char(math.log(2.0) * 3)) == pytest.approx(3.0)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 3\)"):
        losses.cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="mask: expected the shape of targets"):
        losses.accuracy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2,)))
    with pytest.raises(TypeError, match="targets: expected integer class ids"):
        losses.cross_entropy(jnp.zeros((2, 4)), jnp.zeros((2,)))
