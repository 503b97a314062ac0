"""Tests for jrnn.training.checkpoint: round trips, keeping, killed saves, resuming exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn.data import Vocab
from jrnn.training import checkpoint, steps
from jrnn.training.loop import fit
from jrnn.training.tasks import lm
from jrnn.training.tasks.lm import LanguageModel

ROOT = Path(__file__).resolve().parents[1]


def _state(step: int) -> steps.TrainState:
    return steps.TrainState(jnp.asarray(step, jnp.int32), {"w": jnp.full((3,), float(step))}, ())


def _target(meta: dict) -> steps.TrainState:
    return _state(0)


def test_round_trip_of_state_and_utf8_meta(tmp_path):
    model = LanguageModel(vocab_size=6, embed=2, hidden=3, layers=2)
    optimizer = steps.make_optimizer("adamw", 1e-3)
    state = steps.init_state(model, optimizer, jax.random.key(0), batch_size=2)
    state = state._replace(step=jnp.asarray(5), carry=jax.tree.map(jnp.ones_like, state.carry))
    vocab = Vocab.build("안녕 café 🙂")
    checkpoint.save(tmp_path, state, {"vocab": list(vocab.tokens), "model": model.config()})
    fresh = steps.init_state(model, optimizer, jax.random.key(1), batch_size=2)
    restored, meta = checkpoint.restore(tmp_path, lambda meta: fresh)
    assert Vocab(tuple(meta["vocab"])) == vocab and "🙂" in meta["vocab"]
    assert meta["model"] == model.config()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_keeps_the_latest_steps(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, _state(step), {"step": step}, keep=2)
    assert checkpoint.steps(tmp_path) == [2, 3]
    assert checkpoint.steps(tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        checkpoint.restore(tmp_path / "missing", _target)


def test_save_killed_before_commit_is_never_loaded(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from jrnn.training import checkpoint
        from jrnn.training.steps import TrainState

        def state(s):
            return TrainState(jnp.asarray(s, jnp.int32), {{"w": jnp.full((3,), float(s))}}, ())

        checkpoint.save({str(tmp_path)!r}, state(1), {{"step": 1}})

        async def die(*args, **kwargs):  # the process is killed once step 2's files are written
            os._exit(9)

        atomicity.AtomicRenameTemporaryPath.finalize = die
        checkpoint.save({str(tmp_path)!r}, state(2), {{"step": 2}})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("1",)]
    assert leftovers and all(name.startswith("2.") for name in leftovers)  # a half-written step 2
    assert checkpoint.steps(tmp_path) == [1]
    state, meta = checkpoint.restore(tmp_path, _target)
    assert int(state.step) == 1 and meta == {"step": 1}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones(3))


def test_unreadable_latest_step_falls_back_to_the_previous(tmp_path):
    checkpoint.save(tmp_path, _state(1), {"step": 1})
    checkpoint.save(tmp_path, _state(2), {"step": 2})
    for path in (tmp_path / "2" / "state").rglob("*"):  # damage step 2's arrays
        if path.is_file():
            path.write_bytes(b"")
    with pytest.warns(UserWarning, match=r"checkpoint step 2: .*/2/state/.*; using step 1"):
        state, meta = checkpoint.restore(tmp_path, _target)
    assert int(state.step) == 1 and meta["step"] == 1


def test_resume_equals_uninterrupted(tmp_path):
    text = "to be or not to be, that is the question. " * 6
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    model = LanguageModel(vocab_size=len(vocab), embed=4, hidden=8, cell="rnn", dropout=0.1)
    optimizer = steps.make_optimizer("adamw", 1e-2)
    step_fn = steps.make_train_step(model, optimizer)
    per_epoch = lm.num_batches(len(ids), 2, 16)

    def run(state, **kwargs):
        return fit(
            step_fn,
            state,
            lambda epoch: lm.batches(ids, 2, 16),
            steps_per_epoch=per_epoch,
            epochs=2,
            key=jax.random.key(3),
            learning_rate=1e-2,
            **kwargs,
        )

    fresh = steps.init_state(model, optimizer, jax.random.key(0), batch_size=2)
    _, full = run(fresh)

    class Killed(Exception):
        pass

    def kill(info):
        if info.step == per_epoch + 2:  # in the middle of the second epoch
            raise Killed

    def save(state, seconds):  # called after every step; write the one before the kill
        if int(state.step) == per_epoch + 1:
            checkpoint.save(tmp_path, state, {"seconds": seconds})

    with pytest.raises(Killed):
        run(fresh, on_step=kill, save=save, save_every=0.0)
    restored, meta = checkpoint.restore(tmp_path, lambda meta: fresh)
    assert int(restored.step) == per_epoch + 1  # the last save before the kill
    _, resumed = run(restored, seconds=meta["seconds"])
    tail = full["loss_curve"][per_epoch + 1 :]
    assert [s for s, _ in resumed["loss_curve"]] == [s for s, _ in tail]
    np.testing.assert_allclose(
        [loss for _, loss in resumed["loss_curve"]], [loss for _, loss in tail], rtol=1e-6
    )


def test_incompatible_target_is_a_clear_error(tmp_path):
    checkpoint.save(tmp_path, _state(1), {"step": 1})
    wrong = steps.TrainState(jnp.asarray(0), {"w": jnp.zeros((5,))}, ())
    with pytest.raises(
        ValueError, match=r"params/w: \(\(3,\), 'float32'\) in the checkpoint, \(\(5,\)"
    ):
        checkpoint.restore(tmp_path, lambda meta: wrong)
