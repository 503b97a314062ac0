"""Tests for jrnn.training.generate: greedy / temperature / top-k sampling from a language model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn.data import Vocab
from jrnn.training import steps
from jrnn.training.generate import _generate, generate, sample_logits
from jrnn.training.loop import fit
from jrnn.training.tasks import lm
from jrnn.training.tasks.classify import Classifier
from jrnn.training.tasks.lm import LanguageModel
from jrnn.training.tasks.tag import Tagger

MODEL = LanguageModel(vocab_size=9, embed=4, hidden=8, layers=2, cell="gru")


def test_greedy_equals_a_python_loop_over_apply():
    params = MODEL.init(jax.random.key(0))
    prompt = jnp.array([[2, 3, 4], [5, 5, 1]])
    out = generate(MODEL, params, prompt, 6, jax.random.key(1), temperature=0)
    logits, carry = MODEL.apply(params, prompt)
    expected = []
    token = jnp.argmax(logits[:, -1, 2:], axis=-1) + 2  # never <pad> (0) nor <unk> (1)
    for _ in range(6):
        expected.append(token)
        logits, carry = MODEL.apply(params, token[:, None].astype(jnp.int32), carry)
        token = jnp.argmax(logits[:, 0, 2:], axis=-1) + 2
    np.testing.assert_array_equal(np.asarray(out), np.stack(expected, axis=1))


def test_sampling_is_reproducible_from_the_key_and_compiles_once():
    params = MODEL.init(jax.random.key(0))
    prompt = jnp.array([1, 2])
    a = generate(MODEL, params, prompt, 20, jax.random.key(7), temperature=1.5)
    b = generate(MODEL, params, prompt, 20, jax.random.key(7), temperature=1.5)
    c = generate(MODEL, params, prompt, 20, jax.random.key(8), temperature=1.5)
    assert a.shape == (20,) and a.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    size = _generate._cache_size()
    generate(MODEL, params, prompt, 20, jax.random.key(9), temperature=1.5)
    assert _generate._cache_size() == size
    top1 = generate(MODEL, params, prompt, 20, jax.random.key(7), top_k=1)
    greedy = generate(MODEL, params, prompt, 20, jax.random.key(0), temperature=0)
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))


def test_sample_logits_top_k_and_temperature():
    logits = jnp.array([0.0, 3.0, 1.0, 2.5, -1.0])
    keys = jax.random.split(jax.random.key(0), 2000)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, top_k=2))(keys))
    assert set(draws.tolist()) == {1, 3}
    p3 = np.exp(2.5) / (np.exp(3.0) + np.exp(2.5))  # softmax restricted to the top 2
    assert abs((draws == 3).mean() - p3) < 0.05
    cold = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, temperature=0.05))(keys))
    assert (cold == 1).mean() > 0.99
    assert int(sample_logits(keys[0], logits, temperature=0)) == 1


def test_trained_model_continues_the_pattern():
    text = "abcdefg" * 60
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    model = LanguageModel(vocab_size=len(vocab), embed=8, hidden=32, cell="rnn")
    optimizer = steps.make_optimizer("adam", 0.02)
    state, _ = fit(
        steps.make_train_step(model, optimizer),
        steps.init_state(model, optimizer, jax.random.key(0), batch_size=4),
        lambda epoch: lm.batches(ids, 4, 16),
        steps_per_epoch=lm.num_batches(len(ids), 4, 16),
        epochs=6,
        key=jax.random.key(1),
        learning_rate=0.02,
    )
    out = generate(model, state.params, vocab.encode("cde"), 14, jax.random.key(0), top_k=2)
    assert "".join(vocab.decode(np.asarray(out))) == "fgabcdefgabcde"


@pytest.mark.parametrize(
    "model",
    [Classifier(vocab_size=9, num_classes=2, bidirectional=True), Tagger(vocab_size=9, num_tags=3)],
)
def test_bidirectional_models_cannot_generate(model):
    with pytest.raises(ValueError, match="cannot generate from a bidirectional model"):
        generate(model, None, jnp.array([1]), 3, jax.random.key(0))


def test_bad_arguments():
    params = MODEL.init(jax.random.key(0))
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="model: expected a language model"):
        generate(Classifier(vocab_size=9, num_classes=2, bidirectional=False), params,
                 jnp.array([1]), 3, key)  # fmt: skip
    with pytest.raises(ValueError, match="prompt: expected"):
        generate(MODEL, params, jnp.zeros((0,), jnp.int32), 3, key)
    with pytest.raises(ValueError, match="length: expected a positive integer"):
        generate(MODEL, params, jnp.array([1]), 0, key)
    with pytest.raises(ValueError, match=r"top_k: expected None or 1\.\.7 \(the ids but <pad>"):
        generate(MODEL, params, jnp.array([1]), 3, key, top_k=10)
    with pytest.raises(ValueError, match="temperature"):
        generate(MODEL, params, jnp.array([1]), 3, key, temperature=-1.0)
