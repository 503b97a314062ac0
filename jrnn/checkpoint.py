"""Checkpoints with orbax-checkpoint: the training state plus a JSON record of the run.

Each checkpoint is a step folder ``DIR/<step>/`` holding the :class:`jrnn.train.TrainState`
(params, optimiser state, step, carry) and ``meta``, a JSON dict (model config, vocabularies,
training seconds, ...). orbax writes a step into a temporary folder and renames it only once
everything is on disk, so a process killed while saving leaves no step folder behind; and if a
committed step cannot be read, :func:`restore` falls back to the previous one.

Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> from jrnn import checkpoint
    >>> from jrnn.train import TrainState
    >>> state = TrainState(jnp.asarray(3), {"w": jnp.ones(2)}, ())
    >>> directory = tempfile.mkdtemp()
    >>> checkpoint.save(directory, state, {"note": "안녕"})
    >>> restored, meta = checkpoint.restore(directory, lambda meta: state)
    >>> int(restored.step), meta["note"]
    (3, '안녕')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jrnn.train import TrainState


def _manager(directory: str | PathLike[str], keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(Path(directory).resolve(), options=options, item_handlers=handlers)


def _shapes(tree: Any) -> dict[str, tuple]:
    """``{"params/rnn/0/0/weight_ih": (shape, dtype), ...}`` for the array leaves of a tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(_key_name, path)): (tuple(x.shape), str(x.dtype)) for path, x in leaves}


def _key_name(key: Any) -> str:
    return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def _check_target(saved: dict[str, tuple], wanted: dict[str, tuple], step: int) -> None:
    diffs = [
        f"{k}: {saved.get(k, 'missing')} in the checkpoint, {v} expected"
        for k, v in wanted.items()
        if saved.get(k) != v
    ] + [f"{k}: not expected" for k in saved.keys() - wanted.keys()]
    if diffs:
        raise ValueError(
            f"checkpoint step {step} does not match the target: {'; '.join(diffs[:3])}"
        )


def save(
    directory: str | PathLike[str], state: TrainState, meta: dict[str, Any], *, keep: int = 2
) -> None:
    """Save ``state`` and the JSON-serialisable ``meta`` as step ``state.step``.

    Keeps the ``keep`` most recent steps; saving a step that exists replaces it.
    """
    step = int(state.step)
    with _manager(directory, keep) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        manager.save(step, args=args)
        manager.wait_until_finished()


def steps(directory: str | PathLike[str]) -> list[int]:
    """The committed (complete) steps in ``directory``, oldest first; ``[]`` if none."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def read_meta(directory: str | PathLike[str]) -> dict[str, Any]:
    """The ``meta`` dict of the newest readable checkpoint in ``directory``."""
    errors = []
    with _manager(directory) as manager:
        for step in reversed(steps(directory)):
            try:
                return _read_meta(manager, step)
            except Exception as e:  # an unreadable step: fall back to the previous one
                errors.append(f"step {step}: {e}")
    raise FileNotFoundError(f"no readable checkpoint in {directory}: {'; '.join(errors)}")


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(
    directory: str | PathLike[str], make_target: Callable[[dict[str, Any]], TrainState]
) -> tuple[TrainState, dict[str, Any]]:
    """Load the newest readable checkpoint.

    Args:
        directory: The checkpoint folder.
        make_target: Given the step's ``meta``, a state with the structure, shapes and dtypes
            to restore into (e.g. a fresh ``init_state`` for the model in ``meta``); errors it
            raises (such as an incompatible config) propagate.

    Returns:
        ``(state, meta)``; the state's arrays are on the default device.

    Raises:
        FileNotFoundError: If ``directory`` holds no complete checkpoint.
        ValueError: If the target's arrays differ from the checkpoint's (names, shapes, dtypes),
            or no complete checkpoint can be read.
    """
    found = steps(directory)
    if not found:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    errors = []
    with _manager(directory) as manager:
        for step in reversed(found):
            try:
                meta = _read_meta(manager, step)
            except Exception as e:  # an unreadable step: fall back to the previous one
                errors.append(f"step {step}: {e}")
                continue
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, make_target(meta))
            try:
                saved = _shapes(manager.item_metadata(step)["state"].tree)
            except Exception as e:
                errors.append(f"step {step}: {e}")
                continue
            _check_target(saved, _shapes(abstract), step)  # a wrong target: no fallback
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                state = manager.restore(step, args=args)["state"]
            except Exception as e:
                errors.append(f"step {step}: {e}")
                continue
            if errors:
                warnings.warn(f"skipped unreadable checkpoints: {errors}", stacklevel=2)
            return state, meta
    raise ValueError(f"no readable checkpoint in {directory}: {'; '.join(errors)}")
