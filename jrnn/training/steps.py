"""Training steps: optax optimisers, a jit-compiled ``train_step`` and ``eval_step``, sharding.

The state is a :class:`TrainState` pytree. ``make_train_step(model, optimizer)`` returns the
jit-compiled pure function ``train_step(state, batch, key) -> (state, metrics)``. A language
model trains with truncated BPTT: ``state.carry`` holds the recurrent state at the end of the
previous chunk; the next step starts from it with its gradient stopped, so backpropagation runs
through one chunk only while the state flows through the whole stream.

Data parallelism: :func:`data_mesh` makes a 1-D mesh over the devices of every process (see
:mod:`jrnn.training.distributed`); :func:`shard` replicates the params and optimiser state and
splits batches (and the carry) along the batch axis, each process transferring only its own
devices' rows. The jitted step then runs on every device and the loss is the same as on one
device.

Example:
    >>> import jax, numpy as np
    >>> from jrnn.training import steps
    >>> from jrnn.training.tasks.lm import LanguageModel
    >>> model = LanguageModel(vocab_size=5, embed=4, hidden=8)
    >>> optimizer = steps.make_optimizer("adam", 1e-2)
    >>> state = steps.init_state(model, optimizer, jax.random.key(0), batch_size=2)
    >>> step = steps.make_train_step(model, optimizer)
    >>> batch = {"ids": np.zeros((2, 3), np.int32), "targets": np.ones((2, 3), np.int32)}
    >>> state, metrics = step(state, batch, jax.random.key(1))
    >>> int(state.step), sorted(metrics)
    (1, ['accuracy', 'finite', 'grad_norm', 'loss'])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrnn.losses import accuracy, cross_entropy
from jrnn.training.batches import Batch
from jrnn.training.model import Model

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


class TrainState(NamedTuple):
    """Everything a training step reads and updates.

    Attributes:
        step: `()` int32 number of steps taken.
        params: the model's params.
        opt_state: the optimiser's state (the learning rate is in ``opt_state.hyperparams``).
        carry: the model's state between batches (``model.zero_carry``): a language model's
            `(layers, B, H)` leaves, None for the other tasks.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    carry: Any = None


def make_optimizer(
    name: str = "adamw",
    learning_rate: float = 2e-3,
    *,
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """An optax optimiser with global-norm gradient clipping and an adjustable learning rate.

    Args:
        name: ``"adam"``, ``"adamw"`` (decoupled ``weight_decay``) or ``"sgd"`` (``momentum``).
        learning_rate: The initial learning rate; change it with :func:`set_learning_rate`.
        weight_decay: AdamW's decoupled weight decay.
        clip_norm: Clip the gradients' global norm to this value first; None for no clipping.
        momentum: SGD momentum (0 for plain SGD).

    Returns:
        An ``optax.inject_hyperparams`` transformation.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"name: expected one of {OPTIMIZERS}, got {name!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm!r}")

    def build(learning_rate: float) -> optax.GradientTransformation:
        if name == "adam":
            opt = optax.adam(learning_rate)
        elif name == "adamw":
            opt = optax.adamw(learning_rate, weight_decay=weight_decay)
        else:
            opt = optax.sgd(learning_rate, momentum=momentum or None)
        return opt if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), opt)

    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


def learning_rate_at(
    progress: float, base: float, schedule: str = "cosine", final_ratio: float = 0.1
) -> float:
    """The learning rate at ``progress`` in ``[0, 1]`` (the fraction of training done).

    ``"constant"`` keeps ``base``; ``"cosine"`` decays from ``base`` to ``final_ratio * base``
    along half a cosine.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return base
    p = min(max(progress, 0.0), 1.0)
    return base * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def set_learning_rate(state: TrainState, learning_rate: float) -> TrainState:
    """``state`` with the optimiser's learning rate replaced (no recompilation)."""
    hyper = dict(state.opt_state.hyperparams)
    hyper["learning_rate"] = jnp.full_like(hyper["learning_rate"], learning_rate)
    return state._replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def init_state(
    model: Model,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    *,
    batch_size: int | None = None,
) -> TrainState:
    """Fresh params, optimiser state and carry (a language model's needs ``batch_size``)."""
    params = model.init(key)
    carry = model.zero_carry(params, batch_size)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), carry)


def _loss(model: Model, params: Any, batch: Batch, carry: Any, key: jax.Array | None):
    logits, carry = model.forward(params, batch, carry, dropout_key=key)
    mask = batch.get("mask")
    loss = cross_entropy(logits, batch["targets"], mask)
    return loss, (accuracy(logits, batch["targets"], mask), carry)


def _all_finite(tree: Any) -> jax.Array:
    """`()` bool: whether every element of every leaf of ``tree`` is finite."""
    return jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]).all()


def make_train_step(
    model: Model, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """The jit-compiled ``train_step(state, batch, key) -> (state, metrics)``.

    ``key`` drives dropout. ``metrics`` holds the batch's mean ``loss``, ``accuracy``, the
    gradients' global norm before clipping, ``grad_norm``, and ``finite``: whether the loss, the
    gradient norm and the updated params are all finite. A step that is not finite is not
    applied: it returns the params, optimiser state and carry it was given, with ``step + 1``
    (its batch counts as read; :func:`jrnn.training.loop.fit` decides whether to go on).
    """

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
        carry = jax.lax.stop_gradient(state.carry)  # truncated BPTT: no gradient into the past
        grad_fn = jax.value_and_grad(lambda p: _loss(model, p, batch, carry, key), has_aux=True)
        (loss, (acc, carry)), grads = grad_fn(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
        applied, kept = (params, opt_state, carry), (state.params, state.opt_state, state.carry)
        params, opt_state, carry = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), applied, kept
        )
        metrics = {"loss": loss, "accuracy": acc, "grad_norm": grad_norm, "finite": finite}
        return TrainState(state.step + 1, params, opt_state, carry), metrics

    return jax.jit(train_step)


def make_eval_step(model: Model) -> Callable[[Any, Batch, Any], tuple[dict, Any]]:
    """The jit-compiled ``eval_step(params, batch, carry) -> (metrics, carry)`` (no dropout).

    ``metrics`` holds the mean ``loss`` and ``accuracy`` over the batch's valid positions and
    their number, ``count``; ``carry`` is None except for a language model.
    """

    def eval_step(params: Any, batch: Batch, carry: Any = None) -> tuple[dict, Any]:
        loss, (acc, carry) = _loss(model, params, batch, carry, None)
        mask = batch.get("mask")
        count = jnp.asarray(batch["targets"].size, jnp.float32) if mask is None else mask.sum()
        return {"loss": loss, "accuracy": acc, "count": count}, carry

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable,
    params: Any,
    batches: Iterable[Batch],
    *,
    carry: Any = None,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Mean ``loss`` and ``accuracy`` over every valid position of ``batches``, and ``count``.

    A language model's ``carry`` (e.g. ``model.zero_carry(params, B)``) flows from batch to
    batch.
    """
    total = {"loss": 0.0, "accuracy": 0.0, "count": 0.0}
    for batch in batches:
        metrics, carry = eval_step(params, shard(batch, mesh), carry)
        metrics = jax.device_get(metrics)
        n = float(metrics["count"])
        total["loss"] += float(metrics["loss"]) * n
        total["accuracy"] += float(metrics["accuracy"]) * n
        total["count"] += n
    if total["count"] == 0:
        raise ValueError("batches: nothing to evaluate (no valid position)")
    return {
        "loss": total["loss"] / total["count"],
        "accuracy": total["accuracy"] / total["count"],
        "count": total["count"],
    }


# -- data parallelism -------------------------------------------------------------------------


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: the devices of all processes,
    ``jax.devices()``)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def shard(tree: Any, mesh: Mesh | None) -> Any:
    """Place a :data:`~jrnn.training.batches.Batch` or a :class:`TrainState` on ``mesh``
    (unchanged when None).

    Batch arrays and the carry are split along their batch axis (0 for a batch, 1 for the
    carry's `(layers, B, H)`); params and optimiser state are replicated. The values are the
    whole arrays, the same in every process; each process transfers to its own devices only
    the parts they hold, so with several processes the result is one global array.
    """
    if mesh is None:
        return tree
    n = mesh.devices.size

    def put(x: Any, spec: PartitionSpec, axis: int | None = None) -> jax.Array:
        if axis is not None and np.shape(x)[axis] % n:
            raise ValueError(
                f"batch size {np.shape(x)[axis]} is not divisible by the {n} devices in use"
            )
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index])

    if isinstance(tree, TrainState):
        replicated = functools.partial(put, spec=PartitionSpec())
        return TrainState(
            replicated(tree.step),
            jax.tree.map(replicated, tree.params),
            jax.tree.map(replicated, tree.opt_state),
            jax.tree.map(lambda x: put(x, PartitionSpec(None, "data"), 1), tree.carry),
        )
    return jax.tree.map(lambda x: put(x, PartitionSpec("data"), 0), tree)
