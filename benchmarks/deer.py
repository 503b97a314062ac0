"""The Newton methods against the sequential paths: ``python -m benchmarks.deer``.

For each cell, sequence length ``T`` and hidden size ``H`` (one layer, batch 16, input size
``H``), every method runs the same input: ``scan``, ``compiled`` (CPU), ``quasi-deer``, ``deer``
and ``elk``. After compiling and warming up every method of a configuration, each repetition
runs every method's forward and train step (forward and backward of ``mean(output**2)`` with
respect to params and input) once, in an order that rotates from one repetition to the next;
the table shows medians and their ratios to ``scan`` and ``compiled`` (below 1 is faster).
Newton iterations, the final residual and whether the solver fell back come from
:func:`jrnn.diagnostics.newton` on the same input; every output is checked against ``scan``.
Memory is XLA's temp + output bytes of the compiled forward and train step.

The whole Jacobians of ``deer`` and ``elk`` take ``T * B * n^2`` floats (``n = H``, ``2 H`` for
LSTM): configurations over ``--max-dense-mb`` skip them. Any method whose compiled train step
needs more than ``--max-memory-mb`` is skipped too.

Example:
    python -m benchmarks.deer --cells gru lstm --steps 1000 10000 --hidden 4 16 --reps 5 \\
        --out deer_cpu.md
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jrnn
from benchmarks import models
from benchmarks.run import describe_machine, round_robin
from jrnn import diagnostics, malloc

CELLS = {"gru": jrnn.GRU, "lstm": jrnn.LSTM}
METHODS = ("scan", "compiled", "quasi-deer", "deer", "elk")
NEWTON = ("quasi-deer", "deer", "elk")
DENSE = ("deer", "elk")
SEED = 0
COLUMNS = (
    "cell", "T", "H", "method", "iterations", "residual", "fell back", "fwd ms", "train ms",
    "fwd ×scan", "train ×scan", "fwd ×compiled", "train ×compiled", "memory MB fwd/train",
    "compile s fwd/train", "max |Δ| vs scan",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deer", description=__doc__)
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--steps", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--hidden", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after compiling")
    parser.add_argument("--max-dense-mb", type=float, default=512, help="see the description")
    parser.add_argument("--max-memory-mb", type=float, default=8192, help="see the description")
    parser.add_argument("--quick", action="store_true", help="T=200, H=4, 2 reps: a smoke test")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (+ .json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.reps, args.warmup = [200], [4], 2, 1
    if min(args.steps + args.hidden + [args.batch, args.reps]) < 1 or args.warmup < 0:
        parser.error("--steps, --hidden, --batch and --reps must be >= 1 and --warmup >= 0")
    return args


def dense_mb(cell: str, steps: int, hidden: int, batch: int) -> float:
    """Megabytes of one whole-Jacobian array `(T, B, n, n)` in float32."""
    n = 2 * hidden if cell == "lstm" else hidden
    return steps * batch * n * n * 4 / 2**20


def bench(cell: str, steps: int, hidden: int, args: argparse.Namespace, notes: list[str]):
    """The rows of one configuration."""
    spec = CELLS[cell](hidden, hidden)
    params = spec.init(jax.random.key(SEED))
    x = jax.random.normal(jax.random.key(SEED + 1), (args.batch, steps, hidden))
    name = f"{cell} T={steps:,} H={hidden}"
    built, solved = {}, {}
    for method in args.methods:
        if method == "compiled" and not jrnn.methods.compiled.available():
            notes.append("compiled: not built on this machine")
            continue
        if method == "compiled" and jax.default_backend() != "cpu":
            continue
        if method in DENSE and dense_mb(cell, steps, hidden, args.batch) > args.max_dense_mb:
            mb = dense_mb(cell, steps, hidden, args.batch)
            notes.append(f"{name} {method}: skipped, one Jacobian array is {mb:,.0f} MB")
            continue
        print(f"{name}: compiling {method}", file=sys.stderr, flush=True)
        apply = functools.partial(spec.apply, method=method)
        model = models.jax_model(lambda p, x, apply=apply: apply(p, x)[0], params, x)
        if model.memory_bytes and max(model.memory_bytes) > args.max_memory_mb * 2**20:
            notes.append(f"{name} {method}: skipped, XLA memory {max(model.memory_bytes):,} B")
            continue
        built[method] = model
        if method in NEWTON:
            stats = jax.jit(functools.partial(diagnostics.newton, spec, method=method))(params, x)[
                2
            ][0]
            solved[method] = stats
    tasks = {(m, kind): getattr(model, kind) for m, model in built.items()
             for kind in ("forward", "train")}  # fmt: skip
    runs = round_robin(tasks, args.reps, args.warmup)
    median = {task: statistics.median(times) for task, times in runs.items()}
    rows = []
    for method, model in built.items():
        stats = solved.get(method)
        row: dict[str, Any] = {
            "cell": cell, "T": steps, "H": hidden, "method": method,
            "iterations": None if stats is None else int(stats.iterations),
            "residual": None if stats is None else float(stats.residual),
            "fell back": None if stats is None else bool(stats.fell_back),
            "fwd ms": median[method, "forward"], "train ms": median[method, "train"],
            "runs ms": {kind: runs[method, kind] for kind in ("forward", "train")},
            "memory MB": None if model.memory_bytes is None
            else [b / 2**20 for b in model.memory_bytes],
            "compile s": list(model.compile_s),
            "max |Δ| vs scan": float(np.max(np.abs(model.output - built["scan"].output)))
            if "scan" in built else None,
        }  # fmt: skip
        for peer in ("scan", "compiled"):
            for kind, label in (("forward", "fwd"), ("train", "train")):
                ratio = median[method, kind] / median[peer, kind] if peer in built else None
                row[f"{label} ×{peer}"] = None if peer == method else ratio
        rows.append(row)
        print(f"  {method}: forward {row['fwd ms']:.1f} ms, train {row['train ms']:.1f} ms"
              + ("" if stats is None else f", {row['iterations']} iterations"),
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def cell_text(row: dict[str, Any], column: str) -> str:
    if column == "memory MB fwd/train":
        memory = row["memory MB"]
        return "–" if memory is None else f"{memory[0]:,.1f}/{memory[1]:,.1f}"
    if column == "compile s fwd/train":
        return "{:.1f}/{:.1f}".format(*row["compile s"])
    value = row[column]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column in ("residual", "max |Δ| vs scan"):
            return f"{value:.0e}"
        return f"{value:,.2f}" if "×" in column else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) and column == "T" else str(value)


def table(rows: list[dict[str, Any]], meta: dict[str, Any], notes: list[str]) -> str:
    lines = [f"{key}: {value}  " for key, value in meta.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell_text(row, c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    meta = describe_machine(jax.default_backend(), jax.devices()[0], [])
    meta |= {"batch": args.batch, "reps": args.reps, "warmup": args.warmup}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    start = time.perf_counter()
    for cell in args.cells:
        for steps in args.steps:
            for hidden in args.hidden:
                rows += bench(cell, steps, hidden, args, notes)
                meta["wall s"] = round(time.perf_counter() - start)
                if args.out:  # rewritten after every configuration
                    args.out.write_text(table(rows, meta, notes))
                    args.out.with_suffix(".json").write_text(
                        json.dumps({"meta": meta, "rows": rows, "notes": notes}, indent=1)
                    )
    print(table(rows, meta, notes))
    return rows


if __name__ == "__main__":
    malloc.reexec()  # the jrnn command's glibc malloc settings, for all methods (jrnn.malloc)
    main()
