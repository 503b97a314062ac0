"""Checkpoints: the training state through orbax-checkpoint, and jrnn's record of each step.

Each checkpoint is a step folder ``DIR/<step>/`` holding ``state/``, the
:class:`~jrnn.training.steps.TrainState` (params, optimiser state, step, carry) as orbax writes
it, and ``jrnn.json``, the step's record::

    {"format": 1, "jrnn": "0.1.0", "meta": {...}, "meta_sha256": "...",
     "files": {"state/...": {"bytes": 238, "sha256": "..."}, ...}}

``meta`` is the caller's JSON dict (model config, vocabularies, training seconds, ...),
``meta_sha256`` the SHA-256 of its canonical JSON (sorted keys), and ``files`` every
file of the step with its size and SHA-256. orbax writes the state into a
temporary folder and renames it once complete; the record is written after that, through a
temporary file of its own, so a step without a record is a save that did not finish.

Reading a step checks its record first: a missing record, a missing, truncated or changed file
is reported in one line (the step, the file, what failed) and :func:`latest` and
:func:`restore` fall back to the previous step. :func:`save` keeps the ``keep`` newest finished
steps (at least two), so there is one to fall back to. A record of another ``format`` (another
jrnn) or a state that does not fit the target (another model) is refused, in one line naming
the field.

Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> from jrnn.training import checkpoint
    >>> from jrnn.training.steps import TrainState
    >>> state = TrainState(jnp.asarray(3), {"w": jnp.ones(2)}, ())
    >>> directory = tempfile.mkdtemp()
    >>> checkpoint.save(directory, state, {"note": "안녕"})
    >>> restored, meta = checkpoint.restore(directory, lambda meta: state)
    >>> int(restored.step), meta["note"]
    (3, '안녕')
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

import jrnn
from jrnn.data import FileFormatError, read_json
from jrnn.training.steps import TrainState

FORMAT = 1  # of the step folder and its record; a jrnn that changes either changes this
RECORD = "jrnn.json"


class CheckpointError(ValueError):
    """A checkpoint step that cannot be read: damaged, or its save did not finish."""


class IncompatibleCheckpointError(CheckpointError):
    """A readable checkpoint step that this jrnn or this model cannot take."""


def _manager(directory: str | PathLike[str]) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
    handlers = {"state": ocp.StandardCheckpointHandler()}
    return ocp.CheckpointManager(Path(directory).resolve(), options=options, item_handlers=handlers)


def _shapes(tree: Any) -> dict[str, tuple]:
    """``{"params/rnn/0/0/weight_ih": (shape, dtype), ...}`` for the array leaves of a tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(_key_name, path)): (tuple(x.shape), str(x.dtype)) for path, x in leaves}


def _key_name(key: Any) -> str:
    return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def _check_target(saved: dict[str, tuple], wanted: dict[str, tuple], where: Path) -> None:
    diffs = [
        f"{k}: {saved.get(k, 'missing')} in the checkpoint, {v} expected"
        for k, v in wanted.items()
        if saved.get(k) != v
    ] + [f"{k}: not expected" for k in saved.keys() - wanted.keys()]
    if diffs:
        raise IncompatibleCheckpointError(
            f"checkpoint {where} does not match the model: {'; '.join(diffs[:3])}"
        )


def _files(step_dir: Path) -> dict[str, dict[str, Any]]:
    """Every file of a step folder but its record: ``{relative path: {"bytes", "sha256"}}``."""
    return {
        path.relative_to(step_dir).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and path.name != RECORD
    }


def _meta_digest(meta: Any) -> str:
    """The SHA-256 of ``meta``'s canonical JSON (sorted keys), the same before and after a
    round trip through a JSON file."""
    text = json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _write_record(step_dir: Path, meta: dict[str, Any]) -> None:
    record = {
        "format": FORMAT,
        "jrnn": jrnn.__version__,
        "meta": meta,
        "meta_sha256": _meta_digest(meta),
        "files": _files(step_dir),
    }
    partial = step_dir / f"{RECORD}.partial"
    partial.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(partial, step_dir / RECORD)  # the step is finished once its record exists


def save(
    directory: str | PathLike[str], state: TrainState, meta: dict[str, Any], *, keep: int = 2
) -> None:
    """Save ``state`` and the JSON-serialisable ``meta`` as step ``state.step``.

    Keeps the ``keep`` (at least 2) newest finished steps, and any unfinished step newer than
    the oldest of them; saving a step that exists replaces it.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ValueError(
            f"keep: expected an integer >= 2 (a damaged step falls back to the one before), "
            f"got {keep!r}"
        )
    step = int(state.step)
    directory = Path(directory).resolve()
    with _manager(directory) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
        if jax.process_index() == 0:  # one record, by one process of a multi-process run
            _write_record(directory / str(step), meta)
        multihost_utils.sync_global_devices(f"jrnn: checkpoint step {step} recorded")
        finished = sorted(s for s in manager.all_steps() if (directory / str(s) / RECORD).is_file())
        for old in manager.all_steps():
            if old < finished[-keep:][0]:
                manager.delete(old)


def steps(directory: str | PathLike[str]) -> list[int]:
    """The steps in ``directory`` whose state orbax committed, oldest first; ``[]`` if none."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def _checked_meta(step_dir: Path) -> dict[str, Any]:
    """The ``meta`` of a step whose record and files check out; else a :class:`CheckpointError`
    naming the step, the file and what failed."""
    where = f"checkpoint step {step_dir.name}"
    path = step_dir / RECORD
    if not path.is_file():
        raise CheckpointError(f"{where}: {path} is missing: the save did not finish")
    try:
        record = read_json(path)
    except (FileFormatError, OSError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    fields = ("format", "jrnn", "meta", "meta_sha256", "files")
    if not isinstance(record, dict) or not all(k in record for k in fields):
        raise CheckpointError(f"{where}: {path}: expected a JSON object with {', '.join(fields)}")
    if record["format"] != FORMAT:
        raise IncompatibleCheckpointError(
            f"{where}: {path}: format {record['format']!r} (written by jrnn {record['jrnn']!r}); "
            f"this jrnn {jrnn.__version__} reads format {FORMAT}"
        )
    meta, files = record["meta"], record["files"]
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: {path}: meta: expected a JSON object, got {meta!r:.60}")
    try:
        digest = _meta_digest(meta)
    except ValueError as e:  # NaN or infinity: never in a record jrnn wrote
        raise CheckpointError(f"{where}: {path}: meta: {e}") from None
    if digest != record["meta_sha256"]:
        raise CheckpointError(
            f"{where}: {path}: meta: damaged (its SHA-256 is not the one recorded)"
        )
    if not isinstance(files, dict) or not files:
        raise CheckpointError(
            f"{where}: {path}: files: expected the step's files, got {files!r:.60}"
        )
    found = _files(step_dir)
    for name, want in files.items():
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int)):
            raise CheckpointError(f"{where}: {path}: files: expected sizes, got {want!r:.60}")
        got = found.get(name)
        if got is None:
            raise CheckpointError(f"{where}: {step_dir / name} is missing")
        if got["bytes"] != want["bytes"]:
            raise CheckpointError(
                f"{where}: {step_dir / name}: {got['bytes']} bytes, {want['bytes']} expected "
                "(truncated or replaced)"
            )
        if got["sha256"] != want.get("sha256"):
            raise CheckpointError(
                f"{where}: {step_dir / name}: damaged (its SHA-256 is not the one recorded)"
            )
    return meta


def _first_line(error: Exception) -> str:
    """An error of orbax or TensorStore in one line, without TensorStore's spec dump."""
    text = str(error).split("\n", 1)[0].split(" [tensorstore_spec=", 1)[0]
    return f"{type(error).__name__}: {text[:300]}"


def _report(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log or (lambda line: warnings.warn(line, stacklevel=3))


def latest(
    directory: str | PathLike[str], *, log: Callable[[str], None] | None = None
) -> tuple[int, dict[str, Any]]:
    """``(step, meta)`` of the newest step whose record and files check out.

    Each newer step that does not is reported to ``log`` in one line (a ``UserWarning`` when
    None).

    Raises:
        FileNotFoundError: If ``directory`` holds no step.
        CheckpointError: If no step checks out (the message lists why, step by step).
        IncompatibleCheckpointError: If the newest readable step is of another format.
    """
    directory = Path(directory).resolve()
    found = steps(directory)
    if not found:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    reasons = []
    for step in reversed(found):
        try:
            meta = _checked_meta(directory / str(step))
        except IncompatibleCheckpointError:
            raise
        except CheckpointError as e:
            reasons.append(str(e))
            continue
        for reason in reasons:
            _report(log)(f"{reason}; using step {step}")
        return step, meta
    raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(reasons)}")


def restore(
    directory: str | PathLike[str],
    make_target: Callable[[dict[str, Any]], TrainState],
    *,
    step: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Load a step: ``step``, or else the newest that can be read.

    Args:
        directory: The checkpoint folder.
        make_target: Given the step's ``meta``, a state with the structure, shapes and dtypes
            to restore into (e.g. a fresh ``init_state`` for the model in ``meta``); errors it
            raises (such as an incompatible config) propagate.
        step: The step to load (e.g. from :func:`latest`), with no fallback; None for the
            newest readable one.
        log: Where each newer step that could not be read is reported, in one line; a
            ``UserWarning`` when None.

    Returns:
        ``(state, meta)``; the state's arrays are on the default device.

    Raises:
        FileNotFoundError: If ``directory`` holds no step.
        CheckpointError: If no step can be read (or ``step`` cannot).
        IncompatibleCheckpointError: If the step to load is of another format, or its arrays
            differ from the target's (names, shapes, dtypes).
    """
    directory = Path(directory).resolve()
    candidates = [step] if step is not None else list(reversed(steps(directory)))
    if not candidates:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    reasons = []
    with _manager(directory) as manager:
        for candidate in candidates:
            step_dir = directory / str(candidate)
            try:
                meta = _checked_meta(step_dir)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as e:
                reasons.append(str(e))
                continue
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, make_target(meta))
            try:
                saved = _shapes(manager.item_metadata(candidate)["state"].tree)
            except Exception as e:  # orbax cannot read the step: fall back to the previous one
                reasons.append(f"checkpoint step {candidate}: {step_dir}: {_first_line(e)}")
                continue
            _check_target(saved, _shapes(abstract), step_dir)
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                state = manager.restore(candidate, args=args)["state"]
            except Exception as e:  # as above
                reasons.append(f"checkpoint step {candidate}: {step_dir}: {_first_line(e)}")
                continue
            for reason in reasons:
                _report(log)(f"{reason}; using step {candidate}")
            return state, meta
    raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(reasons)}")
