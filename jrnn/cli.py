"""The ``jrnn`` command: ``jrnn train lm|classify|tag``, ``jrnn sample`` and ``jrnn eval``.

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

from jrnn import malloc, runs
from jrnn.loop import StepInfo

app = typer.Typer(
    help="Recurrent networks in JAX: train, sample and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model on a task.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _one_line_errors(fn):
    """Turn bad-input exceptions into one ``error:`` line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as e:
            message = f"file not found: {e.filename}" if e.filename else str(e)
        except OSError as e:
            message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
        except (ValueError, TypeError) as e:
            message = str(e)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    return wrapper


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option}: expected a positive number, got {value}")


def _common(
    cell: Annotated[str | None, typer.Option(help="Recurrent cell: rnn, lstm or gru.")] = None,
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
    matmul_dtype: Annotated[
        str | None,
        typer.Option(help="float32 (exact) or bfloat16 (mixed precision: bf16 matmul operands)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, dropout, shuffling.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
) -> None:
    """Options shared by every ``jrnn train`` command (its signature is reused, see below)."""


def _with_default(param: inspect.Parameter, task: str) -> inspect.Parameter:
    """The parameter with the task's default value named in its help."""
    default = getattr(runs.DEFAULTS[task], param.name, None)
    if param.name == "out":
        default = Path("runs") / task
    if default is None or param.name == "resume":
        return param
    if isinstance(default, bool):
        default = "on" if default else "off"
    kind, info = typing.get_args(param.annotation)
    info = copy.copy(info)
    info.help = f"{info.help} (default: {default})"
    return param.replace(annotation=Annotated[kind, info])


def _train_command(task: str):
    """Register ``jrnn train <task>``: the task's own options, then the common ones."""

    def register(specific):
        own = list(inspect.signature(specific).parameters.values())
        common = [_with_default(p, task) for p in inspect.signature(_common).parameters.values()]

        @_one_line_errors
        def command(**kwargs):
            files, overrides = specific(**{p.name: kwargs.pop(p.name) for p in own})
            out, resume = kwargs.pop("out") or Path("runs") / task, kwargs.pop("resume")
            chosen = {k: v for k, v in {**kwargs, **overrides}.items() if v is not None}
            options = dataclasses.replace(runs.DEFAULTS[task], **chosen)
            _train(task, files, options, out, resume)

        command.__signature__ = inspect.Signature(own + common)
        command.__doc__ = specific.__doc__
        train_app.command(task)(command)
        return specific

    return register


@_train_command("lm")
def _lm(
    text: Annotated[
        Path | None, typer.Option(help="UTF-8 text (default: Python's own pydoc_data.topics).")
    ] = None,
    seq_len: Annotated[int | None, typer.Option(help="Truncated-BPTT chunk length.")] = None,
):
    """Character-level language model; trains for 60 s unless --epochs or --time-budget."""
    return {"text": text}, {"seq_len": seq_len}


@_train_command("classify")
def _classify(
    train: Annotated[Path, typer.Option(help="TSV file of label<TAB>text lines.")],
    valid: Annotated[Path, typer.Option(help="Validation TSV file.")],
    test: Annotated[Path | None, typer.Option(help="Test TSV file.")] = None,
    pooling: Annotated[
        str | None, typer.Option(help="last, mean or max over time (default: max).")
    ] = None,
):
    """Sentence classification (many-to-one): embedding, recurrent stack, pooling, softmax."""
    return {"train": train, "valid": valid, "test": test}, {"pooling": pooling}


@_train_command("tag")
def _tag(
    train: Annotated[Path, typer.Option(help="CoNLL-U training file.")],
    valid: Annotated[Path, typer.Option(help="CoNLL-U validation file.")],
    test: Annotated[Path | None, typer.Option(help="CoNLL-U test file.")] = None,
    tag: Annotated[str | None, typer.Option(help="upos or xpos column.")] = None,
    chars: Annotated[
        bool | None, typer.Option(help="Character-level word features (on by default).")
    ] = None,
):
    """Sequence tagging (many-to-many), e.g. part-of-speech tags from CoNLL-U files."""
    return {"train": train, "valid": valid, "test": test}, {"tag": tag, "chars": chars}


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


def _train(task: str, files: dict, options: runs.Options, out: Path, resume: bool) -> None:
    console = Console(stderr=True)
    bar, on_step = _progress(console)
    try:  # the bar starts at the first step: errors before it print alone
        metrics = runs.train(
            task,
            files,
            options,
            out,
            resume=resume,
            on_step=on_step,
            log=lambda m: bar.console.print(m, markup=False, soft_wrap=True),
        )
    finally:
        bar.stop()
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


@app.command()
@_one_line_errors
def sample(
    ckpt: Annotated[Path, typer.Option(help="Run folder (or its checkpoints folder).")],
    prompt: Annotated[str, typer.Option(help="Text to continue.", show_default="a newline")] = "\n",
    length: Annotated[int, typer.Option(help="Characters to generate.")] = 300,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0: greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Generate text from a trained language model."""
    _positive(length=length, top_k=top_k)
    if temperature < 0:
        raise ValueError(f"--temperature: expected a number >= 0, got {temperature}")
    model, params, meta, vocabs = runs.load(ckpt)
    if meta["task"] != "lm":
        raise ValueError(
            f"--ckpt: {ckpt} holds a {meta['task']} model; only a language model can generate"
        )
    text = runs.sample_text(
        model, params, vocabs["chars"], prompt,
        length=length, temperature=temperature, top_k=top_k, seed=seed,
    )  # fmt: skip
    typer.echo(prompt + text)


@app.command("eval")
@_one_line_errors
def evaluate(
    ckpt: Annotated[Path, typer.Option(help="Run folder (or its checkpoints folder).")],
    data: Annotated[Path, typer.Option(help="Text, TSV or CoNLL-U file, as the task reads.")],
) -> None:
    """Evaluate a trained model on a file: loss, accuracy (and bits per char for lm)."""
    metrics = runs.evaluate_file(ckpt, data)
    typer.echo(
        "  ".join(f"{k} {v:.4f}" if k != "count" else f"{k} {v:.0f}" for k, v in metrics.items())
    )


def main() -> None:
    """Entry point of the ``jrnn`` console script: glibc malloc settings, then the command."""
    malloc.reexec()
    app()
