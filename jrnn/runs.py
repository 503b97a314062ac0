"""Whole runs from files: read the data, build the model, train with checkpoints, evaluate.

This is what the ``jrnn`` command runs; it is usable from code too. A run writes
``OUT/checkpoints/`` (see :mod:`jrnn.checkpoint`) and ``OUT/metrics.json``. Inputs:

- ``lm``: ``text`` (a UTF-8 file; Python's own ``pydoc_data.topics`` when None), its first 90%
  for training and the rest for validation;
- ``classify``: ``train``/``valid``/``test`` TSV files of ``label<TAB>text`` lines;
- ``tag``: ``train``/``valid``/``test`` CoNLL-U files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jrnn import checkpoint, tasks
from jrnn.data import Vocab, read_conllu, read_text, read_tsv, tokenize_words
from jrnn.generate import generate
from jrnn.heads import POOLING
from jrnn.loop import StepInfo, fit
from jrnn.losses import bits_per_char
from jrnn.models import CELLS, MATMUL_DTYPES, Classifier, LanguageModel, Model, Tagger, from_config
from jrnn.train import (
    OPTIMIZERS,
    SCHEDULES,
    TrainState,
    data_mesh,
    evaluate,
    init_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

TASKS = ("lm", "classify", "tag")
BUCKET_QUANTILES = (0.5, 0.8, 0.95)  # of the sentence lengths, plus the longest
UNLIMITED_EPOCHS = 1_000_000  # with a time budget and no epoch count


@dataclasses.dataclass(frozen=True)
class Options:
    """A run's hyper-parameters (model and training); :data:`DEFAULTS` holds each task's."""

    cell: str = "lstm"
    layers: int = 1
    hidden: int = 128
    embed: int = 128
    bidirectional: bool = False
    dropout: float = 0.0
    word_dropout: float = 0.0  # classify, tag
    pooling: str = "last"  # classify
    chars: bool = True  # tag: character-level word features
    matmul_dtype: str = "float32"  # "bfloat16": mixed-precision recurrent matmuls
    tag: str = "upos"  # tag: the CoNLL-U column
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    schedule: str = "cosine"
    batch_size: int = 32
    seq_len: int = 64  # lm
    epochs: int | None = None
    time_budget: float | None = None
    seed: int = 0


DEFAULTS = {
    "lm": Options(layers=1, hidden=256, embed=64, batch_size=32, seq_len=64),
    "classify": Options(
        hidden=128,
        embed=128,
        bidirectional=True,
        dropout=0.5,
        word_dropout=0.2,
        pooling="max",
        epochs=15,
    ),
    "tag": Options(
        hidden=128, embed=100, bidirectional=True, dropout=0.33, batch_size=32, epochs=25
    ),
}
LM_DEFAULT_BUDGET = 60.0  # seconds, when neither epochs nor a time budget is given


class Prepared(NamedTuple):
    """A task's data ready for training: vocabularies and batch factories."""

    vocabs: dict[str, Vocab]
    train: Callable[[int], Iterator[dict]]  # epoch -> batches
    steps_per_epoch: int
    evals: dict[str, Callable[[], Iterator[dict]]]  # split name -> batches
    eval_rows: int  # batch size of the evaluation batches


def default_text() -> str:
    """The English text that ships with Python: its documentation topics (``pydoc_data``)."""
    from pydoc_data.topics import topics

    return "\n".join(topics.values())


def _eval_rows(num_tokens: int, options: Options, devices: int, name: str) -> int:
    rows = min(options.batch_size, (num_tokens - 1) // options.seq_len) // devices * devices
    if rows < 1:
        raise ValueError(
            f"{name}: text too short to evaluate: {num_tokens} characters, need at least "
            f"{devices * options.seq_len + 1} for seq_len={options.seq_len}"
        )
    return rows


def prepare(
    task: str,
    files: dict[str, Path | None],
    options: Options,
    vocabs: dict[str, Vocab] | None = None,
    devices: int = 1,
) -> Prepared:
    """Read a task's files and build batch factories; vocabularies are built when None."""
    b = options.batch_size
    if task == "lm":
        path = files.get("text")
        text = default_text() if path is None else read_text(path)
        name = str(path or "pydoc_data.topics")
        train_text, valid_text = tasks.lm_split(text)
        vocabs = vocabs or {"chars": Vocab.build(train_text)}
        train_ids, valid_ids = (vocabs["chars"].encode(t) for t in (train_text, valid_text))
        steps = tasks.lm_steps(len(train_ids), b, options.seq_len)
        if steps < 1:
            raise ValueError(
                f"{name}: text too short: {len(train_ids)} training characters, need at least "
                f"batch_size * seq_len + 1 = {b * options.seq_len + 1}"
            )
        rows = _eval_rows(len(valid_ids), options, devices, f"{name} (last 10%)")
        return Prepared(
            vocabs,
            lambda epoch: tasks.lm_batches(train_ids, b, options.seq_len),
            steps,
            {"valid": lambda: tasks.lm_batches(valid_ids, rows, options.seq_len)},
            rows,
        )
    if task == "classify":
        splits = {k: read_tsv(p) for k, p in files.items() if p is not None}
        vocabs = vocabs or {
            "words": Vocab.build(
                (w for text in splits["train"][0] for w in tokenize_words(text)), min_count=2
            ),
            "labels": Vocab.build(splits["train"][1]),
        }
        items = {
            k: tasks.classify_items(texts, labels, vocabs["words"], vocabs["labels"])
            for k, (texts, labels) in splits.items()
        }
        sizes = {k: [len(ids) for ids, _ in v] for k, v in items.items()}
        make = tasks.classify_batches
    else:
        splits = {k: read_conllu(p, tag=options.tag) for k, p in files.items() if p is not None}
        vocabs = vocabs or tasks.tag_vocabs(splits["train"])
        items = {k: tasks.tag_data(s, vocabs) for k, s in splits.items()}
        sizes = {k: [len(ids) for ids, _ in v.items] for k, v in items.items()}
        make = tasks.tag_batches
    buckets = _buckets(sizes)

    def batches(split: str, seed: int, shuffle: bool) -> Iterator[dict]:
        return make(items[split], b, seed=seed, shuffle=shuffle, buckets=buckets)

    return Prepared(
        vocabs,
        lambda epoch: batches("train", options.seed + epoch, True),
        math.ceil(len(sizes.get("train", ())) / b),
        {k: (lambda k=k: batches(k, 0, False)) for k in items if k != "train"},
        b,
    )


_CHOICES = {
    "cell": tuple(CELLS),
    "matmul_dtype": MATMUL_DTYPES,
    "pooling": POOLING,
    "tag": ("upos", "xpos"),
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
}


def check_options(task: str, options: Options) -> None:
    """Reject impossible options before any data is read, naming the option."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if task == "lm" and options.bidirectional:
        raise ValueError(
            "--bidirectional: a language model cannot be bidirectional (it generates left to "
            "right, each output being the next input, so it may not read ahead)"
        )
    if task == "lm" and options.word_dropout:
        raise ValueError("--word-dropout: a language model reads its own text; not for lm")
    for name in ("layers", "hidden", "embed", "batch_size", "seq_len", "epochs"):
        value = getattr(options, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}"
            )
    for name in ("lr", "clip", "time_budget"):
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a positive number, got {value!r}"
            )
    for name in ("dropout", "word_dropout"):
        rate = getattr(options, name)
        if not 0 <= rate < 1:
            raise ValueError(
                f"--{name.replace('_', '-')}: expected a number in [0, 1), got {rate!r}"
            )
    for name, allowed in _CHOICES.items():
        if getattr(options, name) not in allowed:
            raise ValueError(
                f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, "
                f"got {getattr(options, name)!r}"
            )


def _buckets(sizes: dict[str, list[int]]) -> tuple[int, ...]:
    """Padded lengths at quantiles of the training lengths (multiples of 8) and the longest."""
    train = np.asarray(sizes.get("train") or [n for v in sizes.values() for n in v])
    cuts = np.quantile(train, BUCKET_QUANTILES)
    longest = max(max(v) for v in sizes.values())
    return tuple(sorted({*(min(int(-(-c // 8) * 8), longest) for c in cuts), longest}))


def build_model(task: str, options: Options, vocabs: dict[str, Vocab]) -> Model:
    """The task's model for ``options`` and vocabulary sizes."""
    o = options
    if task == "lm":
        return LanguageModel(
            len(vocabs["chars"]), o.embed, o.hidden, o.layers, o.cell, o.dropout, o.matmul_dtype
        )
    if task == "classify":
        return Classifier(
            len(vocabs["words"]), len(vocabs["labels"]), o.embed, o.hidden, o.layers, o.cell,
            o.bidirectional, o.dropout, o.pooling, o.word_dropout, o.matmul_dtype,
        )  # fmt: skip
    return Tagger(
        len(vocabs["words"]), len(vocabs["tags"]), len(vocabs["chars"]) if o.chars else 0,
        o.embed, o.hidden, o.layers, o.cell, o.bidirectional, o.dropout,
        word_dropout=o.word_dropout, matmul_dtype=o.matmul_dtype,
    )  # fmt: skip


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


# fields that fix the shapes or the data of a run: resuming needs the same values
_FIXED = ("optimizer", "batch_size", "seq_len", "tag", "seed")


def _meta(task: str, model: Model, options: Options, vocabs: dict[str, Vocab]) -> dict:
    return {
        "task": task,
        "model": model.config(),
        "options": dataclasses.asdict(options),
        "vocabs": {name: list(v.tokens) for name, v in vocabs.items()},
    }


def _check_compatible(meta: dict, task: str, model: Model, options: Options, where: Path) -> None:
    asked = {**model.config(), **{k: getattr(options, k) for k in _FIXED}}
    saved = {**meta["model"], **{k: meta["options"][k] for k in _FIXED}}
    diffs = [
        f"{k}={saved.get(k)!r} (checkpoint) vs {v!r}" for k, v in asked.items() if saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"checkpoint in {where} is incompatible with this run: {', '.join(diffs)}; "
            "pass the checkpoint's options to resume"
        )


def train(
    task: str,
    files: dict[str, Path | None],
    options: Options,
    out: Path,
    *,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a task's model, evaluate it, write ``out/metrics.json`` and return the metrics."""
    check_options(task, options)
    wall = time.perf_counter()
    options = _resolve_budget(task, options)
    devices = jax.local_device_count()
    if options.batch_size % devices:
        raise ValueError(
            f"--batch-size {options.batch_size} is not divisible by the {devices} devices in use"
        )
    ckpt_dir = out / "checkpoints"
    meta, vocabs = None, None
    if resume:
        if not checkpoint.steps(ckpt_dir):
            raise FileNotFoundError(f"--resume: no checkpoint found in {ckpt_dir}")
        meta = checkpoint.read_meta(ckpt_dir)
        if meta["task"] != task:
            raise ValueError(f"checkpoint in {ckpt_dir} is for task {meta['task']!r}, not {task!r}")
        vocabs = {k: Vocab(tuple(v)) for k, v in meta["vocabs"].items()}
    data = prepare(task, files, options, vocabs, devices)
    model = build_model(task, options, data.vocabs)
    optimizer, train_step, eval_step = step_functions(model, options)
    key = jax.random.key(options.seed)
    fresh = init_state(model, optimizer, jax.random.fold_in(key, 0), batch_size=options.batch_size)
    seconds = 0.0
    if resume:
        _check_compatible(meta, task, model, options, ckpt_dir)
        state, meta = checkpoint.restore(ckpt_dir, lambda m: fresh)
        seconds = meta["seconds"]
        log(f"resuming from step {int(state.step)} ({seconds:.0f} s of training so far)")
    else:
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        state = fresh
    meta = _meta(task, model, options, data.vocabs)
    mesh = data_mesh() if devices > 1 else None

    def run_evals(params, splits=tuple(data.evals)) -> dict[str, float]:
        results = {}
        for split in splits:
            batches = data.evals[split]
            carry = model.zero_carry(data.eval_rows) if task == "lm" else None
            m = evaluate(eval_step, params, batches(), carry=carry, mesh=mesh)
            results[f"{split}_loss"] = m["loss"]
            results[f"{split}_accuracy"] = m["accuracy"]
            if task == "lm":
                results[f"{split}_bpc"] = float(bits_per_char(m["loss"]))
        return results

    def on_epoch(state: TrainState, epoch: int) -> None:
        if task != "lm":  # validation only; the test split is scored once, at the end
            results = run_evals(state.params, ("valid",))
            log(f"epoch {epoch + 1}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))

    state, summary = fit(
        train_step,
        state,
        data.train,
        steps_per_epoch=data.steps_per_epoch,
        epochs=options.epochs,
        key=jax.random.fold_in(key, 1),
        learning_rate=options.lr,
        schedule=options.schedule,
        time_budget=options.time_budget,
        seconds=seconds,
        mesh=mesh,
        on_step=on_step,
        on_epoch=on_epoch,
        save=lambda s, sec: checkpoint.save(ckpt_dir, s, {**meta, "seconds": sec}),
    )
    metrics = {
        "task": task,
        **run_evals(state.params),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "seconds": summary["seconds"],
        "wall_seconds": time.perf_counter() - wall,
        "compiled_shapes": summary["shapes"],
        "devices": devices,
        "loss_curve": summary["loss_curve"],
    }
    if task == "lm":
        prompt = "\n"
        metrics["sample"] = prompt + sample_text(model, state.params, data.vocabs["chars"], prompt)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), "utf-8")
    return metrics


def _resolve_budget(task: str, options: Options) -> Options:
    if options.epochs is None and options.time_budget is None and task == "lm":
        return dataclasses.replace(options, epochs=UNLIMITED_EPOCHS, time_budget=LM_DEFAULT_BUDGET)
    if options.epochs is None:
        return dataclasses.replace(options, epochs=UNLIMITED_EPOCHS)
    return options


def sample_text(
    model: LanguageModel,
    params: Any,
    vocab: Vocab,
    prompt: str,
    *,
    length: int = 300,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` (unknown characters read as ``<unk>``) and return the new text."""
    if not prompt:
        raise ValueError("--prompt: expected at least one character, got an empty prompt")
    ids = generate(
        model, params, vocab.encode(prompt), length, jax.random.key(seed),
        temperature=temperature, top_k=top_k,
    )  # fmt: skip
    return "".join(vocab.decode(np.asarray(ids)))


def load(ckpt: Path) -> tuple[Model, Any, dict, dict[str, Vocab]]:
    """``(model, params, meta, vocabs)`` of the newest readable checkpoint in ``ckpt``."""
    directory = ckpt / "checkpoints" if (ckpt / "checkpoints").is_dir() else ckpt
    if not checkpoint.steps(directory):
        raise FileNotFoundError(f"--ckpt: no checkpoint found in {ckpt}")

    def target(meta: dict) -> TrainState:
        model = from_config(meta["model"])
        options = Options(**meta["options"])
        optimizer = step_functions(model, options)[0]
        return init_state(model, optimizer, jax.random.key(0), batch_size=options.batch_size)

    state, meta = checkpoint.restore(directory, target)
    vocabs = {k: Vocab(tuple(v)) for k, v in meta["vocabs"].items()}
    return from_config(meta["model"]), state.params, meta, vocabs


def evaluate_file(ckpt: Path, path: Path) -> dict[str, float]:
    """Evaluate the checkpoint's model on a file of its task's format (text, TSV, CoNLL-U)."""
    model, params, meta, vocabs = load(ckpt)
    task, options = meta["task"], Options(**meta["options"])
    if task == "lm":
        ids = vocabs["chars"].encode(read_text(path))
        rows = _eval_rows(len(ids), options, 1, str(path))
        batches, carry = tasks.lm_batches(ids, rows, options.seq_len), model.zero_carry(rows)
    else:
        data = prepare(task, {"train": None, "eval": path}, options, vocabs)
        batches, carry = data.evals["eval"](), None
    m = evaluate(step_functions(model, options)[2], params, batches, carry=carry)
    result = {"loss": m["loss"], "accuracy": m["accuracy"], "count": m["count"]}
    if task == "lm":
        result["bpc"] = float(bits_per_char(m["loss"]))
    return result
