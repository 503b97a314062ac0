"""Parallel in time: ``python -m benchmarks.parallel``.

For each sequence length ``T``: minGRU, minLSTM and the LRU by ``jax.lax.associative_scan``
(``method="associative"``) and by their sequential scan (``method="scan"``), jrnn's LSTM and GRU
(``method="auto"``: the compiled recurrence on CPU) at the same batch and hidden size, and
memax's Equinox LRU (``pip install "jrnn[bench]"``) with the same state and feature sizes. All
run in this one process on the same input, interleaved (:func:`benchmarks.run.round_robin`):
medians of the forward pass and of a train step (forward + backward of ``mean(output**2)`` with
respect to params and input), ratios to a reference row, and XLA's memory (temp + output) of
each compiled executable. One layer, one direction, ``D = H`` input features; the LRU's state
size ``N = H``. Batch and hidden size shrink with ``T`` (:data:`SIZES`) so that every model
fits in a few GB.

Example:
    python -m benchmarks.parallel --steps 128 1000 10000 100000 --reps 5 --out results/parallel.md
    python -m benchmarks.parallel --quick          # a smoke run: tiny shapes, one repetition
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from benchmarks.models import Model, jax_model, jrnn_model
from benchmarks.run import round_robin

# T: its (B, H) sizes. B = 1 at T = 10,000: one long sequence, where the scan's steps are the
# least work each.
SIZES = {128: [(32, 128)], 1_000: [(16, 128)], 10_000: [(8, 64), (1, 64)], 100_000: [(2, 64)]}
QUICK = {64: [(2, 8)]}
SEED = 0
KINDS = ("forward", "train")
CELLS = {"minGRU": jrnn.MinGRU, "minLSTM": jrnn.MinLSTM, "LRU": jrnn.LRU}


@dataclasses.dataclass(frozen=True)
class Row:
    """The medians of one model at one length."""

    steps: int
    batch: int
    hidden: int
    name: str  # e.g. "minGRU associative", "LSTM compiled", "memax LRU"
    reference: str  # the row this one's ratios divide by
    forward_ms: float
    train_ms: float
    memory_mb: tuple[float, float] | None  # forward, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel", description=__doc__)
    parser.add_argument("--steps", nargs="+", type=int, choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    parser.add_argument("--no-memax", action="store_true", help="leave out memax's LRU")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for smoke tests")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (+ .json)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        parser.error(f"--reps must be >= 1 and --warmup >= 0, got {args.reps}, {args.warmup}")
    if args.quick:
        args.steps, args.reps, args.warmup = list(QUICK), 1, 0
    return args


def memax_lru(x: jax.Array, state_size: int) -> Model:
    """memax's Equinox LRU on `x (B, T, D)`, vmapped over the batch, as a :class:`Model`."""
    import equinox as eqx
    from memax.equinox.semigroups.lru import LRU

    model = LRU(state_size, x.shape[-1], jax.random.key(SEED))
    params, static = eqx.partition(model, eqx.is_array)

    def apply(params: Any, x: jax.Array) -> jax.Array:
        lru = eqx.combine(params, static)
        starts = jnp.zeros(x.shape[1], bool)
        return jax.vmap(lambda seq: lru(lru.initialize_carry(), (seq, starts))[1])(x)

    return jax_model(apply, params, x)


def build(steps: int, batch: int, hidden: int, memax: bool) -> dict[str, tuple[str, Callable]]:
    """``name -> (reference name, build function)`` of every model at one length."""
    x = jax.random.normal(jax.random.key(SEED), (batch, steps, hidden), jnp.float32)
    builders: dict[str, tuple[str, Callable[[], Model]]] = {}
    for cell, spec_type in CELLS.items():
        spec = spec_type(hidden, hidden)
        params = spec.init(jax.random.key(SEED))
        for method in ("associative", "scan"):
            builders[f"{cell} {method}"] = (
                f"{cell} associative",
                lambda spec=spec, params=params, method=method: jrnn_model(
                    spec, params, x, {"method": method}
                ),
            )
    for spec in (jrnn.LSTM(hidden, hidden), jrnn.GRU(hidden, hidden)):
        params = spec.init(jax.random.key(SEED))
        method = jrnn.methods.resolve(spec.cell, params[0], jnp.swapaxes(x, 0, 1), jrnn.Options())
        builders[f"{type(spec).__name__} {method}"] = (
            "minGRU associative",
            lambda spec=spec, params=params: jrnn_model(spec, params, x),
        )
    if memax:
        builders["memax LRU"] = ("LRU associative", lambda: memax_lru(x, hidden))
    return builders


def bench_length(steps: int, size: tuple[int, int], args: argparse.Namespace, notes: list[str]):
    """Compile, check and time every model at one length; its rows."""
    batch, hidden = size
    print(f"T={steps}: compiling (B={batch}, H={hidden})", file=sys.stderr, flush=True)
    models, references = {}, {}
    for name, (reference, make) in build(steps, batch, hidden, not args.no_memax).items():
        try:
            models[name], references[name] = make(), reference
        except Exception as error:  # a failing model must not cost the other measurements
            notes.append(f"T={steps} {name} failed: {type(error).__name__}: {error}")
    for cell in CELLS:
        fast, slow = models.get(f"{cell} associative"), models.get(f"{cell} scan")
        if fast is not None and slow is not None:
            diff = float(np.max(np.abs(fast.output - slow.output)))
            notes.append(f"T={steps} {cell}: max |associative - scan| = {diff:.1e}")
    tasks = {(name, kind): getattr(m, kind) for name, m in models.items() for kind in KINDS}
    runs = round_robin(tasks, args.reps, args.warmup)
    rows = []
    for name, model in models.items():
        memory = None
        if model.memory_bytes is not None:
            memory = tuple(round(b / 2**20, 1) for b in model.memory_bytes)
        row = Row(
            steps, batch, hidden, name, references[name],
            statistics.median(runs[name, "forward"]), statistics.median(runs[name, "train"]),
            memory,
        )  # fmt: skip
        rows.append(row)
        print(f"  {name}: forward {row.forward_ms:.2f} ms, train {row.train_ms:.2f} ms",
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def markdown(rows: list[Row], meta: dict[str, Any], notes: list[str]) -> str:
    """The table: times, ratios to each row's reference, XLA memory."""
    by_name = {(row.steps, row.batch, row.hidden, row.name): row for row in rows}
    lines = [f"- {key}: {value}" for key, value in meta.items()]
    lines += [
        "",
        "| T | B x H | model | forward ms | train ms | forward / ref | train / ref | ref | "
        "XLA MB forward / train |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = by_name.get((row.steps, row.batch, row.hidden, row.reference))
        ratios = ("", "") if ref is None else (
            f"{row.forward_ms / ref.forward_ms:.2f}", f"{row.train_ms / ref.train_ms:.2f}"
        )  # fmt: skip
        memory = "" if row.memory_mb is None else f"{row.memory_mb[0]} / {row.memory_mb[1]}"
        lines.append(
            f"| {row.steps} | {row.batch} x {row.hidden} | {row.name} | {row.forward_ms:.2f} | "
            f"{row.train_ms:.2f} | {ratios[0]} | {ratios[1]} | {row.reference} | {memory} |"
        )
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the benchmark; print the table and write it to ``--out`` when given."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else SIZES
    meta = {
        "device": str(jax.devices()[0]),
        "cores": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "load_average_1min": f"{os.getloadavg()[0]:.1f} at the start",
        "timing": f"median of {args.reps} interleaved repetitions after {args.warmup} warm-up",
        "ratios": "time / the ref row's time at the same T (> 1: slower than the ref)",
    }
    rows: list[Row] = []
    notes: list[str] = []
    for steps in args.steps:
        for size in sizes[steps]:
            rows += bench_length(steps, size, args, notes)
        meta["load_average_1min"] += f", {os.getloadavg()[0]:.1f} after T={steps}"
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(markdown(rows, meta, notes))
            data = {"meta": meta, "notes": notes, "rows": [dataclasses.asdict(r) for r in rows]}
            args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(markdown(rows, meta, notes))
    return rows


if __name__ == "__main__":
    main()
