"""The training loop: epochs, a time budget, the learning-rate schedule, resuming, callbacks.

:func:`fit` drives a jit-compiled ``train_step`` (see :mod:`jrnn.train`) over batches. It is
deterministic given the state: the dropout key of step ``s`` is ``fold_in(key, s)``, and a state
restored at step ``s`` resumes at the same batch of the same epoch, so an interrupted and
resumed run follows the uninterrupted run's loss curve.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jrnn.train import TrainState, learning_rate_at, set_learning_rate, shard


class StepInfo(NamedTuple):
    """What :func:`fit` reports after every step (e.g. to a progress bar)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    accuracy: float
    learning_rate: float
    progress: float  # fraction of training done: of the steps or of the time budget
    seconds: float  # training seconds so far, previous runs of a resumed training included


def fit(
    train_step: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]],
    state: TrainState,
    batches: Callable[[int], Iterable[dict]],
    *,
    steps_per_epoch: int,
    epochs: int,
    key: jax.Array,
    learning_rate: float,
    schedule: str = "cosine",
    time_budget: float | None = None,
    seconds: float = 0.0,
    mesh: Mesh | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[TrainState, int], None] | None = None,
    save: Callable[[TrainState, float], None] | None = None,
    save_every: float = 300.0,
) -> tuple[TrainState, dict[str, Any]]:
    """Train until ``epochs`` epochs are done or ``time_budget`` seconds have passed.

    Args:
        train_step: from ``jrnn.train.make_train_step``.
        state: the state to start from (fresh, or restored from a checkpoint).
        batches: ``batches(epoch)`` yields that epoch's ``steps_per_epoch`` batches, the same
            ones every time it is called with the same epoch.
        steps_per_epoch: batches per epoch.
        epochs: number of epochs in the whole training (a resumed run included).
        key: base PRNG key for dropout.
        learning_rate: the schedule's base learning rate.
        schedule: ``"constant"`` or ``"cosine"`` over the training's progress.
        time_budget: stop after this many training seconds (``seconds`` included); None for no
            limit.
        seconds: training seconds already spent by the runs this one resumes.
        mesh: a device mesh for data parallelism (see ``jrnn.train.shard``); None for one device.
        on_step: called after each step with a :class:`StepInfo`.
        on_epoch: called with the state after each completed epoch.
        save: called with ``(state, seconds)`` every ``save_every`` seconds and at the end.
        save_every: seconds between two calls of ``save``.

    Returns:
        ``(state, summary)`` with ``summary`` holding ``steps``, ``seconds``, ``epochs`` (completed,
        fractional), ``loss_curve`` (``[step, loss]`` pairs of this run) and ``shapes`` (distinct
        batch shapes seen, i.e. compilations of the step).
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"need steps_per_epoch and epochs >= 1, got {steps_per_epoch}, {epochs}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget: expected a positive number of seconds, got {time_budget!r}")
    total = steps_per_epoch * epochs
    state = shard(state, mesh)
    step = int(state.step)
    start = time.perf_counter() - seconds
    last_save = time.perf_counter()
    curve: list[list[float]] = []
    shapes: set[tuple] = set()

    def elapsed() -> float:
        return time.perf_counter() - start

    def progress() -> float:
        by_time = elapsed() / time_budget if time_budget else 0.0
        return max(step / total, by_time)

    out_of_time = False
    for epoch in range(step // steps_per_epoch, epochs):
        offset = step - epoch * steps_per_epoch
        if offset == 0 and state.carry is not None:
            state = state._replace(carry=jax.tree.map(jnp.zeros_like, state.carry))
        for batch in itertools.islice(batches(epoch), offset, None):
            lr = learning_rate_at(progress(), learning_rate, schedule)
            state = set_learning_rate(state, lr)
            shapes.add(tuple(sorted((name, x.shape) for name, x in batch.items())))
            state, metrics = train_step(state, shard(batch, mesh), jax.random.fold_in(key, step))
            loss, acc = (float(v) for v in jax.device_get((metrics["loss"], metrics["accuracy"])))
            step += 1
            curve.append([step, loss])
            if on_step is not None:
                on_step(StepInfo(step, total, epoch, loss, acc, lr, progress(), elapsed()))
            if save is not None and time.perf_counter() - last_save > save_every:
                save(state, elapsed())
                last_save = time.perf_counter()
            out_of_time = time_budget is not None and elapsed() >= time_budget
            if out_of_time:
                break
        if step == (epoch + 1) * steps_per_epoch and on_epoch is not None:
            on_epoch(state, epoch)
        if out_of_time:
            break
    seconds = elapsed()
    if save is not None:
        save(state, seconds)
    summary = {
        "steps": step,
        "seconds": seconds,
        "epochs": step / steps_per_epoch,
        "loss_curve": curve,
        "shapes": len(shapes),
    }
    return state, summary
