"""The tasks a run can train, one module each: :mod:`~jrnn.training.tasks.lm`,
:mod:`~jrnn.training.tasks.classify` and :mod:`~jrnn.training.tasks.tag`.

A task module owns all that is particular to its task (defaults, options, reading, vocabularies,
batches, model and metrics) under the names of :class:`Task`; the generic run
(:mod:`jrnn.training.runs`) and command (:mod:`jrnn.training.cli`) only call those names. A new
task is one module with them and one entry of :data:`TASKS`.

Example:
    >>> from jrnn.training import tasks
    >>> list(tasks.TASKS), tasks.get("lm").DEFAULTS.hidden
    (['lm', 'classify', 'tag'], 256)
    >>> model = tasks.get("tag").MODEL(vocab_size=9, num_tags=3, hidden=7)
    >>> tasks.model_from_config(model.config()) == model
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from jrnn.data import Vocab
from jrnn.training.batches import Batch, TaskData
from jrnn.training.model import Model, Params
from jrnn.training.options import Options
from jrnn.training.tasks import classify, lm, tag


class Task(Protocol):
    """The names a task module provides.

    Attributes:
        NAME: the task's name: its command ``jrnn train NAME``, ``"task"`` in its checkpoints.
        HELP: the command's help.
        DEFAULTS: the :class:`~jrnn.training.options.Options` a run starts from.
        DEFAULT_TIME_BUDGET: seconds of training when neither epochs nor a time budget is given
            (None: no limit).
        VALIDATE_EACH_EPOCH: score the ``valid`` split after every epoch.
        RESUME_OPTIONS: options besides the model's config that fix the batches, so that a
            resumed run must repeat them.
        MODEL: the model class (a :class:`~jrnn.training.model.Model`).
    """

    NAME: str
    HELP: str
    DEFAULTS: Options
    DEFAULT_TIME_BUDGET: float | None
    VALIDATE_EACH_EPOCH: bool
    RESUME_OPTIONS: tuple[str, ...]
    MODEL: type[Model]

    def cli_options(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Path | None], dict]:
        """The task's own options of its command, as typer-annotated parameters; returns
        ``(files, options)``: the files to read and the fields of ``Options`` they set."""

    def check(self, options: Options) -> None:
        """Reject the task's impossible options with a ``ValueError`` naming the option."""

    def read(
        self,
        files: dict[str, Path | None],
        options: Options,
        vocabs: dict[str, Vocab] | None = None,
        devices: int = 1,
    ) -> TaskData:
        """Read ``files``; vocabularies are built from the training split when None."""

    def read_eval(
        self, path: Path, options: Options, vocabs: dict[str, Vocab]
    ) -> tuple[Iterator[Batch], int]:
        """The batches of one file of the task's format, and their number of rows."""

    def build_model(self, options: Options, vocabs: dict[str, Vocab]) -> Model:
        """The model of ``options`` for these vocabularies."""

    def derived_metrics(self, loss: float) -> dict[str, float]:
        """Metrics computed from an evaluation's mean loss, beyond loss and accuracy."""

    def final_outputs(self, model: Model, params: Params, vocabs: dict[str, Vocab]) -> dict:
        """Entries a finished run adds to its metrics."""


TASKS: dict[str, Task] = {task.NAME: task for task in (lm, classify, tag)}


def get(name: str) -> Task:
    """The task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


def model_from_config(config: dict[str, Any]) -> Model:
    """Rebuild a model from its ``config()`` (e.g. as stored in a checkpoint)."""
    config = dict(config)
    name = config.pop("task", None)
    if name not in TASKS:
        raise ValueError(f"config: expected a task in {sorted(TASKS)}, got {name!r}")
    model_class = TASKS[name].MODEL
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(model_class)})
    if unknown:
        raise ValueError(f"config: unknown fields {unknown} for task {name!r}")
    return model_class(**config)
