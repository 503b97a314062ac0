"""Tests for jrnn.training's steps, loop, task models and batches: learning actually happens."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.data import Vocab, bucket_lengths
from jrnn.losses import cross_entropy
from jrnn.training import steps
from jrnn.training.generate import generate
from jrnn.training.loop import fit
from jrnn.training.model import CELLS, drop_words
from jrnn.training.options import Options, check_options
from jrnn.training.tasks import classify, lm, model_from_config, tag
from jrnn.training.tasks.classify import Classifier
from jrnn.training.tasks.lm import LanguageModel
from jrnn.training.tasks.tag import Tagger


def _toy_classification(n=12, seed=0):
    """Random id sequences of varied lengths with random labels: only memorisation fits them."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(2, 20, size=rng.integers(2, 7)), int(rng.integers(0, 2))) for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("name", "cell", "bidirectional"),
    [("adamw", "lstm", True), ("adam", "gru", False), ("sgd", "rnn", False)],
)
def test_classifier_memorises_toy_set(name, cell, bidirectional):
    items = _toy_classification()
    model = Classifier(
        vocab_size=20,
        num_classes=2,
        embed=8,
        hidden=16,
        cell=cell,
        bidirectional=bidirectional,
        dropout=0.0,
    )
    lr = 0.3 if name == "sgd" else 0.03
    optimizer = steps.make_optimizer(name, lr)
    state = steps.init_state(model, optimizer, jax.random.key(0))
    step = steps.make_train_step(model, optimizer)
    batch = next(classify.batches(items, len(items), seed=0, shuffle=False))
    first = None
    for i in range(100):
        state, metrics = step(state, batch, jax.random.key(i))
        first = float(metrics["loss"]) if first is None else first
    eval_step = steps.make_eval_step(model)
    result = steps.evaluate(eval_step, state.params, [batch])
    assert result["accuracy"] == 1.0, (name, result)
    assert result["loss"] < 0.2 * first
    assert step._cache_size() == 1  # every call after the first reused the compiled step


def test_tagger_with_characters_learns_unseen_words():
    # the tag is a function of a word's last letter; nearly every word is rare (so <unk> to the
    # word embedding) and the test words never occur in training: only characters can tell
    rng = np.random.default_rng(0)
    tag_of = {"s": "NOUN", "d": "VERB", "y": "ADV"}

    def sentence(stem_len=2):
        stems = ["".join(rng.choice(list("abcefg"), stem_len)) for _ in range(4)]
        words = [stem + rng.choice(list(tag_of)) for stem in stems]
        return words, [tag_of[w[-1]] for w in words]

    train_sents = [sentence() for _ in range(24)]
    test_sents = [sentence(stem_len=3) for _ in range(6)]  # longer stems: unseen words
    vocabs = tag.build_vocabs(train_sents)
    model = Tagger(
        vocab_size=len(vocabs["words"]),
        num_tags=len(vocabs["tags"]),
        char_vocab_size=len(vocabs["chars"]),
        embed=4,
        hidden=16,
        cell="rnn",
        bidirectional=False,
        dropout=0.0,
        char_embed=8,
        char_hidden=8,
    )
    optimizer = steps.make_optimizer("adam", 0.03)
    state = steps.init_state(model, optimizer, jax.random.key(0))
    data = tag.encode(train_sents, vocabs, max_word_len=4)
    state, summary = fit(
        steps.make_train_step(model, optimizer),
        state,
        lambda epoch: tag.batches(data, 12, seed=epoch),
        steps_per_epoch=2,
        epochs=20,
        key=jax.random.key(1),
        learning_rate=0.03,
    )
    curve = [loss for _, loss in summary["loss_curve"]]
    assert curve[-1] < 0.1 * curve[0]
    test_data = tag.encode(test_sents, vocabs, max_word_len=4)
    test = tag.batches(test_data, 12, seed=0, shuffle=False)
    result = steps.evaluate(steps.make_eval_step(model), state.params, test)
    assert result["count"] == 4 * len(test_sents) and result["accuracy"] >= 0.9, result


def test_tagger_reads_each_distinct_word_once():
    # a batch holds each word form's characters once; the logits equal those of a tagger whose
    # character encoder reads every position (a Python loop over positions as the oracle)
    sents = [(["The", "cat", "sat", "on", "the", "mat"], ["X"] * 6), (["the", "cat"], ["X"] * 2)]
    vocabs = tag.build_vocabs(sents, min_count=1)
    data = tag.encode(sents, vocabs, max_word_len=5)
    batch = next(tag.batches(data, 3, seed=0, shuffle=False))
    distinct = {"The", "cat", "sat", "on", "the", "mat", ""}  # "" is padding
    assert batch["chars"].shape == (3 * 4, 5) and batch["char_index"].shape == (3, 6)
    assert int((batch["chars"].sum(axis=1) > 0).sum()) == len(distinct) - 1
    for b, (words, _) in enumerate([*sents, ([], [])]):
        for t in range(6):
            word = words[t] if t < len(words) else ""
            row = batch["chars"][batch["char_index"][b, t]]
            assert vocabs["chars"].decode(row[row > 0]) == list(word)
    model = Tagger(vocab_size=len(vocabs["words"]), num_tags=len(vocabs["tags"]),
                   char_vocab_size=len(vocabs["chars"]), hidden=4, embed=3, char_embed=2,
                   char_hidden=3)  # fmt: skip
    params = model.init(jax.random.key(0))
    logits = model.forward(params, batch)[0]
    per_position = jnp.stack([
        jnp.stack([model._char_features(params, batch["chars"][batch["char_index"][b, t]][None])[0]
                   for t in range(6)]) for b in range(3)
    ])  # fmt: skip
    x = jnp.concatenate([params["embedding"]["weight"][batch["ids"]], per_position], axis=-1)
    ys, _ = model.rnn.apply(params["rnn"], x, lengths=batch["lengths"])
    expected = ys @ params["head"]["weight"].T + params["head"]["bias"][None, None]
    np.testing.assert_allclose(logits, expected, atol=1e-5)


TEXT = "the cat sat on the mat. " * 40
VOCAB = Vocab.build(TEXT)


@pytest.fixture(scope="module")
def compiled_lm():
    """One language model and its compiled step, shared by the tests below (one compilation)."""
    model = LanguageModel(vocab_size=len(VOCAB), embed=8, hidden=16, layers=2)
    optimizer = steps.make_optimizer("adamw", 1e-2)
    return model, optimizer, steps.make_train_step(model, optimizer)


def test_truncated_bptt_carries_state_and_stops_gradient(compiled_lm):
    model, optimizer, step = compiled_lm
    state = steps.init_state(model, optimizer, jax.random.key(0), batch_size=2)
    state = steps.set_learning_rate(state, 0.0)  # no update: compare the forward pass
    ids = np.random.default_rng(0).integers(0, len(VOCAB), size=(2, 33)).astype(np.int32)
    chunks = [{"ids": ids[:, s : s + 16], "targets": ids[:, s + 1 : s + 17]} for s in (0, 16)]
    s1, _ = step(state, chunks[0], jax.random.key(1))
    s2, metrics = step(s1, chunks[1], jax.random.key(2))
    # the carry after two chunks is the state after reading all 32 ids in one go
    _, full_carry = jax.jit(model.apply)(state.params, jnp.asarray(ids[:, :32]))
    for got, want in zip(s2.carry, full_carry, strict=True):  # (h, c)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # the gradient of chunk 2 treats the incoming carry as a constant (truncated BPTT)
    carry = s1.carry

    def chunk_loss(params):
        logits, _ = model.apply(params, chunks[1]["ids"], carry)
        return cross_entropy(logits, chunks[1]["targets"])

    expected = optax.tree.norm(jax.jit(jax.grad(chunk_loss))(s1.params))
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(expected), rtol=1e-5)


def test_language_model_learns_a_stream(compiled_lm):
    model, optimizer, step = compiled_lm
    ids = VOCAB.encode(TEXT)
    per_epoch = lm.num_batches(len(ids), 2, 16)
    _, summary = fit(
        step,
        steps.init_state(model, optimizer, jax.random.key(0), batch_size=2),
        lambda epoch: lm.batches(ids, 2, 16),
        steps_per_epoch=per_epoch,
        epochs=4,
        key=jax.random.key(1),
        learning_rate=1e-2,
    )
    curve = [loss for _, loss in summary["loss_curve"]]
    assert curve[0] > math.log(len(VOCAB)) - 0.5 and curve[-1] < 0.5
    assert summary["shapes"] == 1 and summary["steps"] == 4 * per_epoch
    assert step._cache_size() == 1  # the step compiled once for every test of this module


def test_set_learning_rate_changes_the_update_without_recompiling(compiled_lm):
    model, optimizer, step = compiled_lm
    state = steps.init_state(model, optimizer, jax.random.key(0), batch_size=2)
    batch = {"ids": np.zeros((2, 16), np.int32), "targets": np.ones((2, 16), np.int32)}
    after = {}
    for lr in (0.0, 0.5):
        new, _ = step(steps.set_learning_rate(state, lr), batch, jax.random.key(0))
        after[lr] = np.asarray(new.params["head"]["bias"])
    np.testing.assert_array_equal(after[0.0], np.asarray(state.params["head"]["bias"]))
    assert not np.allclose(after[0.5], np.asarray(state.params["head"]["bias"]))
    assert step._cache_size() == 1


def test_bucketing_bounds_the_number_of_compiled_shapes():
    items = [*_toy_classification(n=40, seed=1), (np.arange(2, 16), 0)]
    buckets = bucket_lengths(14, 2)
    model = Classifier(vocab_size=20, num_classes=2, embed=4, hidden=4, cell="rnn", dropout=0.0)
    optimizer = steps.make_optimizer("sgd", 0.1)
    step = steps.make_train_step(model, optimizer)
    _, summary = fit(
        step,
        steps.init_state(model, optimizer, jax.random.key(0)),
        lambda epoch: classify.batches(items, 8, seed=epoch, buckets=buckets),
        steps_per_epoch=math.ceil(len(items) / 8),
        epochs=2,
        key=jax.random.key(1),
        learning_rate=1e-3,
    )
    assert summary["shapes"] == step._cache_size() == len(buckets)


def test_padding_rows_do_not_change_evaluation():
    items = _toy_classification(n=5)
    model = Classifier(vocab_size=20, num_classes=2, embed=4, hidden=4, pooling="mean")
    params = model.init(jax.random.key(0))
    eval_step = steps.make_eval_step(model)
    exact = steps.evaluate(eval_step, params, classify.batches(items, 5, seed=0))
    padded = steps.evaluate(eval_step, params, classify.batches(items, 8, seed=0))
    assert padded["count"] == exact["count"] == 5
    assert padded["loss"] == pytest.approx(exact["loss"], rel=1e-5)
    assert padded["accuracy"] == pytest.approx(exact["accuracy"])


def test_schedules():
    assert steps.learning_rate_at(0.0, 1.0) == pytest.approx(1.0)
    assert steps.learning_rate_at(0.5, 1.0) == pytest.approx(0.55)
    assert steps.learning_rate_at(1.0, 1.0) == pytest.approx(0.1)
    assert steps.learning_rate_at(0.7, 2.0, "constant") == 2.0


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="name: expected one of"):
        steps.make_optimizer("rmsprop")
    with pytest.raises(ValueError, match="learning_rate: expected a positive number"):
        steps.make_optimizer("adam", 0.0)
    with pytest.raises(ValueError, match="schedule: expected one of"):
        steps.learning_rate_at(0.1, 1.0, "linear")
    with pytest.raises(ValueError, match="cell: expected one of"):
        LanguageModel(vocab_size=5, cell="lstmm")
    with pytest.raises(TypeError, match="positional"):
        LanguageModel(5, 4)  # a model is built by keyword only
    with pytest.raises(ValueError, match="hidden: expected a positive integer"):
        Classifier(vocab_size=5, num_classes=2, hidden=0)
    with pytest.raises(ValueError, match="pooling: expected one of"):
        Classifier(vocab_size=5, num_classes=2, pooling="sum")
    with pytest.raises(ValueError, match="batch_size"):
        steps.init_state(
            LanguageModel(vocab_size=5, embed=2, hidden=2),
            steps.make_optimizer(),
            jax.random.key(0),
        )
    tagger = Tagger(
        vocab_size=5, num_tags=3, char_vocab_size=4, embed=2, hidden=2, char_embed=2, char_hidden=2
    )
    with pytest.raises(ValueError, match="chars: expected character ids"):
        tagger.apply(tagger.init(jax.random.key(0)), jnp.ones((1, 2), jnp.int32), jnp.array([2]))
    model = Tagger(vocab_size=5, num_tags=3, char_vocab_size=4, hidden=7)
    assert model_from_config(model.config()) == model
    with pytest.raises(ValueError, match="unknown fields"):
        model_from_config({**model.config(), "depth": 3})


def test_word_dropout_replaces_words_with_unk_only_in_training():
    ids = jnp.asarray(np.random.default_rng(0).integers(2, 50, size=(40, 50)), jnp.int32)
    ids = ids.at[:, 40:].set(0)  # padding
    dropped = np.asarray(drop_words(jax.random.key(0), 0.3, ids))
    unk = dropped == 1
    assert not unk[:, 40:].any() and (dropped[:, 40:] == 0).all()
    assert abs(unk[:, :40].mean() - 0.3) < 0.03
    np.testing.assert_array_equal(dropped[~unk], np.asarray(ids)[~unk])
    assert drop_words(None, 0.3, ids) is ids
    with pytest.raises(ValueError, match="word_dropout: expected a number in"):
        Tagger(vocab_size=5, num_tags=3, word_dropout=1.0)


def test_a_cell_is_one_entry_of_the_registry(monkeypatch):
    # a cell the registry does not ship: the options, the model and its state all accept it
    monkeypatch.setitem(CELLS, "rnn_relu", functools.partial(jrnn.RNN, nonlinearity="relu"))
    check_options(Options(cell="rnn_relu"))
    model = LanguageModel(vocab_size=5, embed=2, hidden=3, layers=2, cell="rnn_relu")
    params = model.init(jax.random.key(0))
    carry = model.zero_carry(params, 4)
    assert carry.shape == (2, 4, 3)
    logits, carry = model.apply(params, jnp.ones((4, 6), jnp.int32), carry)
    assert logits.shape == (4, 6, 5) and carry.shape == (2, 4, 3)
    lstm = LanguageModel(vocab_size=5, embed=2, hidden=3, layers=2, cell="lstm")
    h, c = lstm.zero_carry(lstm.init(jax.random.key(0)), 4)  # the LSTM cell's carry (h, c)
    assert h.shape == c.shape == (2, 4, 3)


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "lru"])
def test_parallel_in_time_cells_train_and_generate_step_by_step(cell):
    """The parallel-in-time cells are entries of the registry: a language model trains on the
    whole sequence (their default associative path) and generates one step at a time, and its
    sequence logits equal the step-by-step ones."""
    model = LanguageModel(vocab_size=6, embed=4, hidden=5, layers=2, cell=cell)
    params = model.init(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 2, 6)
    whole, _ = model.apply(params, ids, model.zero_carry(params, 2))
    carry, steps = model.zero_carry(params, 2), []
    for t in range(ids.shape[1]):
        logits, carry = model.apply(params, ids[:, t : t + 1], carry)
        steps.append(logits)
    np.testing.assert_allclose(whole, jnp.concatenate(steps, axis=1), atol=1e-5, rtol=1e-5)
    tokens = generate(model, params, ids[0, :2], 5, jax.random.key(2))
    assert tokens.shape[-1] >= 5 and bool(jnp.all(tokens >= 2))  # never <pad> (0) nor <unk> (1)
