"""Whole runs of any task: read the data, build the model, train with checkpoints, evaluate.

This is what the ``jrnn`` command runs; it is usable from code too. A run of the task named
``task`` (see :mod:`jrnn.training.tasks` for each task's files) writes ``OUT/checkpoints/``
(see :mod:`jrnn.training.checkpoint`) and ``OUT/metrics.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax
from jax.experimental import multihost_utils

from jrnn.data import Vocab
from jrnn.training import checkpoint, distributed, tasks
from jrnn.training.loop import NonFinite, NonFiniteError, StepInfo, fit
from jrnn.training.model import Model
from jrnn.training.options import Options, check_options
from jrnn.training.steps import (
    TrainState,
    data_mesh,
    evaluate,
    init_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from jrnn.training.tasks import Task

UNLIMITED_EPOCHS = 1_000_000  # with a time budget and no epoch count
# options that fix the shapes or the data of any run (a task adds its own): resuming repeats them
RESUME_OPTIONS = ("optimizer", "batch_size", "seed")


def step_functions(model: Model, options: Options) -> tuple[optax.GradientTransformation, Any, Any]:
    """``(optimizer, train_step, eval_step)`` for a model and the run's optimiser options.

    Cached: runs of one configuration in one process (a notebook, a test session) reuse the
    compiled steps.
    """
    return _steps(model, options.optimizer, options.lr, options.weight_decay, options.clip)


@functools.lru_cache(maxsize=16)
def _steps(model: Model, optimizer: str, lr: float, weight_decay: float, clip: float):
    opt = make_optimizer(optimizer, lr, weight_decay=weight_decay, clip_norm=clip)
    return opt, make_train_step(model, opt), make_eval_step(model)


def _meta(task: Task, model: Model, options: Options, vocabs: dict[str, Vocab]) -> dict:
    return {
        "task": task.NAME,
        "model": model.config(),
        "options": dataclasses.asdict(options),
        "vocabs": {name: list(v.tokens) for name, v in vocabs.items()},
    }


def _from_meta(meta: dict, where: Path) -> tuple[Task, Model, Options, dict[str, Vocab]]:
    """The task, model, options and vocabularies a checkpoint's ``meta`` describes.

    Raises:
        IncompatibleCheckpointError: naming the field this jrnn cannot take (a record of another
            version, or one that was edited).
    """

    def refuse(message: str) -> checkpoint.IncompatibleCheckpointError:
        return checkpoint.IncompatibleCheckpointError(f"checkpoint {where}: meta {message}")

    objects = {name: (dict, "a JSON object") for name in ("model", "options", "vocabs")}
    for name, (kind, what) in {**objects, "seconds": ((int, float), "a number")}.items():
        value = meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise refuse(f"{name}: expected {what}, got {value!r:.60}")
    try:
        task = tasks.get(meta.get("task"))
        model = tasks.model_from_config(meta["model"])
        options = Options(**meta["options"])
        check_options(options)
        task.check(options)
        vocabs = {name: Vocab(tuple(tokens)) for name, tokens in meta["vocabs"].items()}
    except (TypeError, ValueError) as e:
        raise refuse(str(e)) from None
    return task, model, options, vocabs


def _check_compatible(
    saved_model: Model, saved_options: Options, task: Task, model: Model, options: Options,
    where: Path,
) -> None:  # fmt: skip
    fixed = RESUME_OPTIONS + task.RESUME_OPTIONS
    asked = {**model.config(), **{k: getattr(options, k) for k in fixed}}
    saved = {**saved_model.config(), **{k: getattr(saved_options, k) for k in fixed}}
    diffs = [
        f"{k}={saved.get(k)!r} (checkpoint) vs {v!r}" for k, v in asked.items() if saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"checkpoint in {where} is incompatible with this run: {', '.join(diffs)}; "
            "pass the checkpoint's options to resume"
        )


def _resolve_budget(task: Task, options: Options) -> Options:
    """No epoch count: train until the time budget (the task's default one when None)."""
    if options.epochs is not None:
        return options
    budget = task.DEFAULT_TIME_BUDGET if options.time_budget is None else options.time_budget
    return dataclasses.replace(options, epochs=UNLIMITED_EPOCHS, time_budget=budget)


def train(
    task_name: str,
    files: dict[str, Path | None],
    options: Options,
    out: Path,
    *,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a task's model, evaluate it, write ``out/metrics.json`` and return the metrics.

    Args:
        task_name: a key of :data:`jrnn.training.tasks.TASKS`.
        files: the task's files by split (see the task's ``read``).
        options: the run's hyper-parameters, e.g. the task's ``DEFAULTS`` with some replaced.
        out: the run's folder.
        resume: continue from the checkpoint in ``out`` (which must match ``options``).
        on_step: called after every step (e.g. a progress bar).
        log: prints a line (resuming, validation after each epoch).

    Returns:
        The metrics written: ``task``, ``<split>_loss``, ``<split>_accuracy`` (and the task's
        derived metrics) for each evaluation split, ``steps``, ``epochs``, ``seconds``,
        ``wall_seconds``, ``compiled_shapes``, ``devices``, ``processes``, ``loss_curve``,
        ``skipped_steps`` (see ``options.max_skips``) and the task's final outputs.

    Raises:
        NonFiniteError: at a non-finite step beyond ``options.max_skips`` (see
            :func:`jrnn.training.loop.fit`): the last good state is the latest checkpoint, the
            step's batch is in ``out/nonfinite-step-<step>.json`` and ``metrics.json`` holds
            ``stopped`` (the message) and the summary up to there.

    In a run of several processes (see :mod:`jrnn.training.distributed`) every process calls
    it alike; only process 0 calls ``on_step`` and ``log`` and writes ``metrics.json``.
    """
    task = tasks.get(task_name)
    check_options(options)
    task.check(options)
    wall = time.perf_counter()
    options = _resolve_budget(task, options)
    if not distributed.is_main():
        on_step, log = None, lambda message: None
    devices = jax.device_count()  # of all processes
    if options.batch_size % devices:
        raise ValueError(
            f"--batch-size {options.batch_size} is not divisible by the {devices} devices in use"
        )
    ckpt_dir = out / "checkpoints"
    meta, vocabs = None, None
    if resume:
        if not checkpoint.steps(ckpt_dir):
            raise FileNotFoundError(f"--resume: no checkpoint found in {ckpt_dir}")
        resume_step, meta = checkpoint.latest(ckpt_dir, log=log)
        saved_task, saved_model, saved_options, vocabs = _from_meta(meta, ckpt_dir)
        if saved_task is not task:
            raise ValueError(
                f"checkpoint in {ckpt_dir} is for task {meta['task']!r}, not {task.NAME!r}"
            )
    data = task.read(files, options, vocabs, devices)
    model = task.build_model(options, data.vocabs)
    optimizer, train_step, eval_step = step_functions(model, options)
    key = jax.random.key(options.seed)
    fresh = init_state(model, optimizer, jax.random.fold_in(key, 0), batch_size=options.batch_size)
    seconds = 0.0
    if resume:
        _check_compatible(saved_model, saved_options, task, model, options, ckpt_dir)
        state, meta = checkpoint.restore(ckpt_dir, lambda m: fresh, step=resume_step)
        seconds = meta["seconds"]
        log(f"resuming from step {int(state.step)} ({seconds:.0f} s of training so far)")
    else:
        if distributed.is_main() and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        multihost_utils.sync_global_devices("jrnn: old checkpoints removed")
        state = fresh
    meta = _meta(task, model, options, data.vocabs)
    mesh = data_mesh() if devices > 1 else None

    def run_evals(params: Any, splits: tuple[str, ...] = tuple(data.eval_batches)) -> dict:
        results = {}
        for split in splits:
            carry = model.zero_carry(params, data.eval_rows)
            m = evaluate(eval_step, params, data.eval_batches[split](), carry=carry, mesh=mesh)
            scores = {"loss": m["loss"], "accuracy": m["accuracy"]}
            for name, value in {**scores, **task.derived_metrics(m["loss"])}.items():
                results[f"{split}_{name}"] = value
        return results

    def on_epoch(state: TrainState, epoch: int) -> None:
        # validation only; the test split is scored once, at the end
        results = run_evals(state.params, ("valid",))
        log(f"epoch {epoch + 1}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def nonfinite_path(step: int) -> Path:
        return out / f"nonfinite-step-{step}.json"

    def on_nonfinite(record: NonFinite) -> None:
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(record.as_json(), indent=1)
            nonfinite_path(record.step).write_text(text, "utf-8")
        if record.skipped:
            log(f"step {record.step}: {record.reason()}: skipped; its batch is in "
                f"{nonfinite_path(record.step)}")  # fmt: skip

    try:
        state, summary = fit(
            train_step,
            state,
            data.train_batches,
            steps_per_epoch=data.steps_per_epoch,
            epochs=options.epochs,
            key=jax.random.fold_in(key, 1),
            learning_rate=options.lr,
            schedule=options.schedule,
            time_budget=options.time_budget,
            seconds=seconds,
            mesh=mesh,
            max_skips=options.max_skips,
            on_step=on_step,
            on_epoch=on_epoch if task.VALIDATE_EACH_EPOCH else None,
            on_nonfinite=on_nonfinite,
            save=lambda s, sec: checkpoint.save(ckpt_dir, s, {**meta, "seconds": sec}),
        )
    except NonFiniteError as e:
        message = (
            f"{e}; its batch is in {nonfinite_path(e.record.step)}; lower --lr, or let "
            "--max-skips N such steps be skipped"
        )
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            stopped = {"task": task.NAME, "stopped": message, **e.summary}
            (out / "metrics.json").write_text(json.dumps(stopped, indent=1), "utf-8")
        raise NonFiniteError(message, e.record, e.summary) from None
    metrics = {
        "task": task.NAME,
        **run_evals(state.params),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "seconds": summary["seconds"],
        "wall_seconds": time.perf_counter() - wall,
        "compiled_shapes": summary["shapes"],
        "devices": devices,
        "processes": jax.process_count(),
        "loss_curve": summary["loss_curve"],
        "skipped_steps": summary["skipped_steps"],
        **task.final_outputs(model, state.params, data.vocabs),
    }
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(metrics, ensure_ascii=False, indent=1)
        (out / "metrics.json").write_text(text, "utf-8")
    return metrics


def load(
    ckpt: Path, *, log: Callable[[str], None] | None = None
) -> tuple[Model, Any, dict, dict[str, Vocab]]:
    """``(model, params, meta, vocabs)`` of the newest readable checkpoint in ``ckpt``.

    Each newer step that cannot be read is reported to ``log`` in one line (see
    :func:`jrnn.training.checkpoint.latest`).
    """
    directory = ckpt / "checkpoints" if (ckpt / "checkpoints").is_dir() else ckpt
    if not checkpoint.steps(directory):
        raise FileNotFoundError(f"--ckpt: no checkpoint found in {ckpt}")
    step, meta = checkpoint.latest(directory, log=log)
    _, model, options, vocabs = _from_meta(meta, directory / str(step))
    optimizer = step_functions(model, options)[0]
    target = jax.eval_shape(
        lambda: init_state(model, optimizer, jax.random.key(0), batch_size=options.batch_size)
    )
    state, _ = checkpoint.restore(directory, lambda meta: target, step=step)
    return model, state.params, meta, vocabs


def evaluate_file(
    ckpt: Path, path: Path, *, log: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Evaluate the checkpoint's model on a file of its task's format (text, TSV, CoNLL-U).

    Returns:
        ``loss``, ``accuracy``, ``count`` (the positions scored) and the task's derived metrics.
    """
    model, params, meta, vocabs = load(ckpt, log=log)
    task, options = tasks.get(meta["task"]), Options(**meta["options"])
    batches, rows = task.read_eval(path, options, vocabs)
    carry = model.zero_carry(params, rows)
    m = evaluate(step_functions(model, options)[2], params, batches, carry=carry)
    result = {"loss": m["loss"], "accuracy": m["accuracy"], "count": m["count"]}
    return {**result, **task.derived_metrics(m["loss"])}
