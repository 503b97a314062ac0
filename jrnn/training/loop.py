"""The training loop: epochs, a time budget, the learning-rate schedule, resuming, callbacks.

:func:`fit` drives a jit-compiled ``train_step`` (see :mod:`jrnn.training.steps`) over
batches. It is deterministic given the state: the dropout key of step ``s`` is
``fold_in(key, s)``, and a state restored at step ``s`` resumes at the same batch of the same
epoch, so an interrupted and resumed run follows the uninterrupted run's loss curve.

A step whose loss, gradient norm or updated params are not finite is not applied (the step
itself keeps the state, see :func:`jrnn.training.steps.make_train_step`). :func:`fit` reads
that from the metrics it fetches after every step anyway, so the check costs no extra transfer
from the device. It skips up to ``max_skips`` such steps in a run; the next one stops the run
with a :class:`NonFiniteError`, after saving the state before that step, so the latest
checkpoint is the last good state.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jrnn.training import distributed
from jrnn.training.batches import Batch
from jrnn.training.steps import TrainState, learning_rate_at, set_learning_rate, shard


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


class NonFinite(NamedTuple):
    """A step that was not applied: its loss, gradient norm or updated params were not finite."""

    step: int  # the step's number: the state after it has ``state.step == step``
    epoch: int
    index: int  # the batch's position in its epoch: the ``index``-th of ``batches(epoch)``
    loss: float
    grad_norm: float
    batch: Batch  # the batch as ``batches`` yielded it
    skipped: bool  # True: the run went on; False: the run stopped here

    def reason(self) -> str:
        """What was not finite, e.g. ``"the loss (nan) and the gradient norm (inf) are not
        finite"``."""
        named = (("the loss", self.loss), ("the gradient norm", self.grad_norm))
        bad = [f"{name} ({value})" for name, value in named if not math.isfinite(value)]
        if not bad:
            return (
                f"the updated params are not finite (loss {self.loss:.4g}, gradient norm "
                f"{self.grad_norm:.4g})"
            )
        return " and ".join(bad) + (" are" if len(bad) > 1 else " is") + " not finite"

    def as_json(self) -> dict[str, Any]:
        """The record as JSON: where the batch is in the data, the numbers (as text, since JSON
        has no NaN), and the batch's arrays."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "index": self.index,
            "loss": str(self.loss),
            "grad_norm": str(self.grad_norm),
            "skipped": self.skipped,
            "batch": {name: np.asarray(x).tolist() for name, x in self.batch.items()},
        }


class NonFiniteError(FloatingPointError):
    """A run stopped at a non-finite step it was not allowed to skip.

    Attributes:
        record: the :class:`NonFinite` step.
        summary: :func:`fit`'s summary of the run up to the step before it.
    """

    def __init__(self, message: str, record: NonFinite, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record
        self.summary = summary


def fit(
    train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]],
    state: TrainState,
    batches: Callable[[int], Iterable[Batch]],
    *,
    steps_per_epoch: int,
    epochs: int,
    key: jax.Array,
    learning_rate: float,
    schedule: str = "cosine",
    time_budget: float | None = None,
    seconds: float = 0.0,
    mesh: Mesh | None = None,
    max_skips: int = 0,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[TrainState, int], None] | None = None,
    on_nonfinite: Callable[[NonFinite], None] | None = None,
    save: Callable[[TrainState, float], None] | None = None,
    save_every: float = 300.0,
) -> tuple[TrainState, dict[str, Any]]:
    """Train until ``epochs`` epochs are done or ``time_budget`` seconds have passed.

    Args:
        train_step: from :func:`jrnn.training.steps.make_train_step`.
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
        mesh: a device mesh for data parallelism (see :func:`jrnn.training.steps.shard`); None
            for one device.
        max_skips: non-finite steps this run may skip (each is not applied and its batch is
            passed over); the next one stops the run. 0: stop at the first.
        on_step: called after each step with a :class:`StepInfo`.
        on_epoch: called with the state after each completed epoch.
        on_nonfinite: called with a :class:`NonFinite` for every non-finite step, skipped or
            not, before the run goes on or stops.
        save: called with ``(state, seconds)`` every ``save_every`` seconds, at the end, and
            with the last good state when a non-finite step stops the run; never twice for the
            same step.
        save_every: seconds between two calls of ``save``.

    Returns:
        ``(state, summary)`` with ``summary`` holding ``steps``, ``seconds``, ``epochs`` (completed,
        fractional), ``loss_curve`` (``[step, loss]`` pairs of this run's applied steps),
        ``skipped_steps`` (the non-finite steps skipped) and ``shapes`` (distinct batch shapes
        seen, i.e. compilations of the step).

    Raises:
        NonFiniteError: at a non-finite step beyond ``max_skips``; ``save`` has been called with
            the state before it.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"need steps_per_epoch and epochs >= 1, got {steps_per_epoch}, {epochs}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget: expected a positive number of seconds, got {time_budget!r}")
    if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
        raise ValueError(f"max_skips: expected an integer >= 0, got {max_skips!r}")
    total = steps_per_epoch * epochs
    state = shard(state, mesh)
    step = int(state.step)
    start = time.perf_counter() - seconds
    now = seconds  # training seconds at the last step, agreed by every process (clock())
    last_save = now
    saved_step = None  # the step of the last call of save
    curve: list[list[float]] = []
    skipped: list[int] = []
    shapes: set[tuple] = set()

    def clock() -> float:
        # process 0's clock in every process, so that all take the same decisions (learning
        # rate, saving, stopping) and run the same steps
        return distributed.agreed(time.perf_counter() - start)

    def progress() -> float:
        by_time = now / time_budget if time_budget else 0.0
        return max(step / total, by_time)

    def save_once(state: TrainState, at_step: int) -> None:
        nonlocal saved_step, last_save
        if save is not None and at_step != saved_step:
            save(state, now)
            saved_step = at_step
        last_save = now

    def summary() -> dict[str, Any]:
        return {
            "steps": step,
            "seconds": now,
            "epochs": step / steps_per_epoch,
            "loss_curve": curve,
            "skipped_steps": skipped,
            "shapes": len(shapes),
        }

    out_of_time = False
    for epoch in range(step // steps_per_epoch, epochs):
        offset = step - epoch * steps_per_epoch
        if offset == 0 and state.carry is not None:
            state = state._replace(carry=jax.tree.map(jnp.zeros_like, state.carry))
        for index, batch in enumerate(itertools.islice(batches(epoch), offset, None), offset):
            lr = learning_rate_at(progress(), learning_rate, schedule)
            state = set_learning_rate(state, lr)
            shapes.add(tuple(sorted((name, x.shape) for name, x in batch.items())))
            before = state
            state, metrics = train_step(state, shard(batch, mesh), jax.random.fold_in(key, step))
            fetched = jax.device_get(
                (metrics["loss"], metrics["accuracy"], metrics["grad_norm"], metrics["finite"])
            )
            loss, acc, grad_norm, finite = (float(v) for v in fetched)
            now = clock()
            if not finite:
                record = NonFinite(
                    step + 1, epoch, index, loss, grad_norm, batch, len(skipped) < max_skips
                )
                if on_nonfinite is not None:
                    on_nonfinite(record)
                if not record.skipped:
                    save_once(before, step)
                    raise NonFiniteError(
                        f"step {step + 1}: {record.reason()}; the update was not "
                        f"applied and the run stopped after skipping {len(skipped)} such "
                        f"step(s) (max_skips={max_skips}); the last good state is step {step}"
                        + (" (saved)" if save is not None else ""),
                        record,
                        summary(),
                    )
                skipped.append(step + 1)
            step += 1
            if finite:
                curve.append([step, loss])
            if on_step is not None:
                on_step(StepInfo(step, total, epoch, loss, acc, lr, progress(), now))
            if now - last_save > save_every:
                save_once(state, step)
            out_of_time = time_budget is not None and now >= time_budget
            if out_of_time:
                break
        if step == (epoch + 1) * steps_per_epoch and on_epoch is not None:
            on_epoch(state, epoch)
        if out_of_time:
            break
    now = clock()
    save_once(state, step)
    return state, summary()
