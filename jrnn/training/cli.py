"""The ``jrnn`` command: ``jrnn train TASK`` for each task of :data:`jrnn.training.tasks.TASKS`
(``lm``, ``classify``, ``tag``), ``jrnn sample`` and ``jrnn eval``.

Bad input (a missing or empty file, a malformed line, an impossible option) ends the command
with one ``error: ...`` line on stderr and exit code 1, never a traceback.
"""

import copy
import dataclasses
import functools
import inspect
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from jrnn import malloc
from jrnn.training import distributed, runs
from jrnn.training.loop import StepInfo
from jrnn.training.model import CELLS
from jrnn.training.options import Options, check_positive_int
from jrnn.training.tasks import TASKS, Task, lm

app = typer.Typer(
    help="Recurrent networks in JAX: train, sample and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model on a task.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _one_line_errors(fn):
    """Turn bad-input exceptions, and a run stopped at a non-finite step, into one ``error:``
    line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as e:
            message = f"file not found: {e.filename}" if e.filename else str(e)
        except OSError as e:
            message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
        except (ValueError, TypeError, FloatingPointError) as e:
            message = str(e)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    return wrapper


def _common(
    cell: Annotated[
        str | None, typer.Option(help=f"Recurrent cell: one of {', '.join(CELLS)}.")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden units per direction.")] = None,
    embed: Annotated[int | None, typer.Option(help="Embedding size.")] = None,
    bidirectional: Annotated[
        bool | None, typer.Option(help="Read each sequence in both directions (not lm).")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate in [0, 1).")] = None,
    word_dropout: Annotated[
        float | None, typer.Option(help="Rate of words read as <unk> in training (not lm).")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, adamw or sgd.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant or cosine decay.")] = None,
    clip: Annotated[float | None, typer.Option(help="Global gradient-norm clip.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training data.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Stop training after this many seconds.")
    ] = None,
    max_skips: Annotated[
        int | None,
        typer.Option(
            help="Steps with a non-finite loss or gradient to skip (not applied) before the run "
            "stops at one; a stopped run keeps its last good checkpoint."
        ),
    ] = None,
    matmul_dtype: Annotated[
        str | None,
        typer.Option(help="float32 (exact) or bfloat16 (mixed precision: bf16 matmul operands)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, dropout, shuffling.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    coordinator: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of process 0 in a multi-process run (see --num-processes).",
            envvar=distributed.ENVIRONMENT[0],
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Processes of a multi-process run, each started with its own --process-id "
            "(not needed under srun or mpirun).",
            envvar=distributed.ENVIRONMENT[1],
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(help="This process's index in [0, N).", envvar=distributed.ENVIRONMENT[2]),
    ] = None,
) -> None:
    """Options shared by every ``jrnn train`` command (its signature is reused, see below)."""


def _with_default(param: inspect.Parameter, task: Task) -> inspect.Parameter:
    """The parameter with the task's default value named in its help."""
    default = getattr(task.DEFAULTS, param.name, None)
    if param.name == "out":
        default = Path("runs") / task.NAME
    if default is None or param.name == "resume":
        return param
    if isinstance(default, bool):
        default = "on" if default else "off"
    kind, info = typing.get_args(param.annotation)
    info = copy.copy(info)
    info.help = f"{info.help} (default: {default})"
    return param.replace(annotation=Annotated[kind, info])


def _register(task: Task) -> None:
    """Register ``jrnn train <task>``: the task's own options, then the common ones."""
    own = list(inspect.signature(task.cli_options, eval_str=True).parameters.values())
    common = [_with_default(p, task) for p in inspect.signature(_common).parameters.values()]

    @_one_line_errors
    def command(**kwargs):
        distributed.initialize(
            *(kwargs.pop(k) for k in ("coordinator", "num_processes", "process_id"))
        )
        files, overrides = task.cli_options(**{p.name: kwargs.pop(p.name) for p in own})
        out, resume = kwargs.pop("out") or Path("runs") / task.NAME, kwargs.pop("resume")
        chosen = {k: v for k, v in {**kwargs, **overrides}.items() if v is not None}
        options = dataclasses.replace(task.DEFAULTS, **chosen)
        _train(task.NAME, files, options, out, resume)

    command.__signature__ = inspect.Signature(own + common)
    command.__doc__ = task.HELP
    train_app.command(task.NAME)(command)


for _task in TASKS.values():
    _register(_task)


LOG_EVERY = 30.0  # seconds between two progress lines when stderr is not a terminal


def _progress(console: Console) -> tuple[Progress, Callable[[StepInfo], None]]:
    """A rich progress bar and the ``on_step`` callback that updates it.

    When stderr is not a terminal (a log file), a plain progress line is printed every
    ``LOG_EVERY`` seconds instead.
    """
    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        TextColumn("{task.fields[left]} left"),
        console=console,
    )
    task = bar.add_task("train", total=1.0, step=0, loss="-", speed="- steps/s", left="-")
    first: list = []  # step, progress and time after the first step (which compiles)
    last_line = [time.perf_counter()]

    def on_step(info: StepInfo) -> None:
        now = time.perf_counter()
        if not first:
            bar.start()
            first.extend([info.step, info.progress, now])
            speed, left = "- steps/s", "-"
        else:
            s0, p0, t0 = first
            rate = (info.progress - p0) / max(now - t0, 1e-9)
            speed = f"{(info.step - s0) / max(now - t0, 1e-9):.2f} steps/s"
            left = f"{(1 - info.progress) / rate:.0f} s" if rate > 0 else "-"
        fields = {"step": f"{info.step}", "loss": f"{info.loss:.4f}", "speed": speed, "left": left}
        bar.update(task, completed=info.progress, **fields)
        if not console.is_terminal and now - last_line[0] >= LOG_EVERY:
            last_line[0] = now
            console.print(
                f"step {info.step}  loss {info.loss:.4f}  {speed}  {left} left  "
                f"({info.seconds:.0f} s)",
                markup=False,
                soft_wrap=True,
            )

    return bar, on_step


def _train(task_name: str, files: dict, options: Options, out: Path, resume: bool) -> None:
    console = Console(stderr=True)
    bar, on_step = _progress(console)
    try:  # the bar starts at the first step: errors before it print alone
        metrics = runs.train(
            task_name,
            files,
            options,
            out,
            resume=resume,
            on_step=on_step,
            log=lambda m: bar.console.print(m, markup=False, soft_wrap=True),
        )
    finally:
        bar.stop()
    if not distributed.is_main():
        return
    for key in ("valid", "test"):
        values = {k: v for k, v in metrics.items() if k.startswith(key + "_")}
        if values:
            typer.echo("  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    typer.echo(
        f"steps {metrics['steps']}  epochs {metrics['epochs']:.2f}  "
        f"seconds {metrics['seconds']:.1f}  compiled shapes {metrics['compiled_shapes']}  "
        f"devices {metrics['devices']}  -> {out / 'metrics.json'}"
    )
    if "sample" in metrics:
        typer.echo("sample:\n" + metrics["sample"])


def _stderr(line: str) -> None:
    """Print a line on stderr (e.g. that a damaged checkpoint step was passed over)."""
    typer.echo(line, err=True)


@app.command()
@_one_line_errors
def sample(
    ckpt: Annotated[Path, typer.Option(help="Run folder (or its checkpoints folder).")],
    prompt: Annotated[str, typer.Option(help="Text to continue.", show_default="a newline")] = "\n",
    length: Annotated[int, typer.Option(help="Characters to generate.")] = 300,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0: greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    allow_unk: Annotated[
        bool, typer.Option(help="Let the model write <unk> (never <pad>).")
    ] = False,
) -> None:
    """Generate text from a trained language model."""
    check_positive_int("length", length)
    check_positive_int("top_k", top_k)
    if temperature < 0:
        raise ValueError(f"--temperature: expected a number >= 0, got {temperature}")
    model, params, meta, vocabs = runs.load(ckpt, log=_stderr)
    if not isinstance(model, lm.LanguageModel):
        raise ValueError(
            f"--ckpt: {ckpt} holds a {meta['task']} model; only a language model can generate"
        )
    text = lm.sample_text(
        model, params, vocabs, prompt,
        length=length, temperature=temperature, top_k=top_k, seed=seed, allow_unk=allow_unk,
    )  # fmt: skip
    typer.echo(prompt + text)


@app.command("eval")
@_one_line_errors
def evaluate(
    ckpt: Annotated[Path, typer.Option(help="Run folder (or its checkpoints folder).")],
    data: Annotated[Path, typer.Option(help="Text, TSV or CoNLL-U file, as the task reads.")],
) -> None:
    """Evaluate a trained model on a file: loss, accuracy (and bits per char for lm)."""
    metrics = runs.evaluate_file(ckpt, data, log=_stderr)
    typer.echo(
        "  ".join(f"{k} {v:.4f}" if k != "count" else f"{k} {v:.0f}" for k, v in metrics.items())
    )


def main() -> None:
    """Entry point of the ``jrnn`` console script: glibc malloc settings, then the command."""
    malloc.reexec()
    app()
