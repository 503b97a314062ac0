"""What ``jrnn.flax.LSTM`` costs over ``spec.apply``: ``python -m benchmarks.flax_wrapper``.

Train steps of one LSTM layer on the same weights and input, each the gradient of
``mean(output**2)`` with respect to the weights: ``jrnn.flax.LSTM`` under ``nnx.jit`` with
``nnx.grad``; the same module's state under ``jax.jit`` (``nnx.merge`` inside: the compiled
program without ``nnx.jit``'s per-call work in Python); Flax's
``nnx.RNN(nnx.OptimizedLSTMCell)`` under ``nnx.jit``; and ``spec.apply`` under ``jax.jit`` with
``jax.grad``. They run in one process, interleaved (each repetition runs them all, starting one
further along each time), and the table shows medians and ratios. The wrapper should cost
nothing measurable: its ratio to ``spec.apply`` within 5%.

Example:
    python -m benchmarks.flax_wrapper --reps 20
    python -m benchmarks.flax_wrapper --quick          # tiny shapes, a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jrnn
import jrnn.flax
from benchmarks.run import round_robin

SEED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flax_wrapper", description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    parser.add_argument("--quick", action="store_true", help="B=4, T=8, D=H=8, 3 repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.input_size, args.hidden_size, args.reps = 4, 8, 8, 8, 3
    sizes = (args.batch, args.steps, args.input_size, args.hidden_size, args.reps)
    if min(sizes) < 1 or args.warmup < 0:
        parser.error(f"sizes and --reps must be >= 1 and --warmup >= 0, got {sizes}, {args.warmup}")
    return args


def loss(output: jax.Array) -> jax.Array:
    return jnp.mean(output**2)


def module_output(module: nnx.Module, x: jax.Array) -> jax.Array:
    """The output sequence of either nnx module (jrnn's returns ``(output, h_n)``)."""
    output = module(x)
    return output[0] if isinstance(output, tuple) else output


def train_steps(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The three train steps, compiled and run once; each returns the weights' gradients."""
    rng = np.random.default_rng(SEED)
    x = jnp.asarray(rng.standard_normal((args.batch, args.steps, args.input_size)), jnp.float32)
    flax_rnn = nnx.RNN(nnx.OptimizedLSTMCell(args.input_size, args.hidden_size, rngs=nnx.Rngs(0)))
    spec, params = jrnn.from_flax(flax_rnn)
    wrapper = jrnn.flax.LSTM(args.input_size, args.hidden_size, rngs=nnx.Rngs(0))
    for name, value in jrnn.to_torch(spec, params).items():
        getattr(wrapper, name)[...] = value

    outputs = {
        "jrnn.flax.LSTM": wrapper(x)[0],
        "nnx.RNN(OptimizedLSTMCell)": flax_rnn(x),
        "spec.apply": spec.apply(params, x)[0],
    }
    worst = max(float(jnp.max(jnp.abs(out - outputs["spec.apply"]))) for out in outputs.values())
    print(f"max |output - spec.apply's|: {worst:.1e}", file=sys.stderr)

    nnx_step = nnx.jit(nnx.grad(lambda module, x: loss(module_output(module, x))))
    graphdef, state = nnx.split(wrapper)
    state_step = jax.jit(jax.grad(lambda state, x: loss(nnx.merge(graphdef, state)(x)[0])))
    spec_step = jax.jit(jax.grad(lambda params, x: loss(spec.apply(params, x)[0])))
    steps = {
        "jrnn.flax.LSTM": lambda: jax.block_until_ready(nnx_step(wrapper, x)),
        "jrnn.flax.LSTM, jax.jit of its state": lambda: jax.block_until_ready(state_step(state, x)),
        "nnx.RNN(OptimizedLSTMCell)": lambda: jax.block_until_ready(nnx_step(flax_rnn, x)),
        "spec.apply": lambda: jax.block_until_ready(spec_step(params, x)),
    }
    for step in steps.values():
        step()
    return steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"compiling: B={args.batch}, T={args.steps}, D={args.input_size}, H={args.hidden_size}",
        file=sys.stderr,
    )
    steps = train_steps(args)
    runs = round_robin(
        {(name, "train"): step for name, step in steps.items()}, args.reps, args.warmup
    )
    median = {name: statistics.median(runs[name, "train"]) for name in steps}
    flax_ms, spec_ms = median["nnx.RNN(OptimizedLSTMCell)"], median["spec.apply"]
    print(
        f"LSTM train step (grad of mean(output**2) w.r.t. the weights), B={args.batch}, "
        f"T={args.steps}, D={args.input_size}, H={args.hidden_size}, median of {args.reps}, "
        f"jax {jax.__version__}, backend {jax.default_backend()}\n"
    )
    print("| train step | ms | × spec.apply | × nnx.RNN(OptimizedLSTMCell) |")
    print("|---|---|---|---|")
    for name, ms in median.items():
        print(f"| {name} | {ms:.2f} | {ms / spec_ms:.3f} | {ms / flax_ms:.3f} |")
    print()
    for name in ("jrnn.flax.LSTM", "jrnn.flax.LSTM, jax.jit of its state"):
        overhead = median[name] / spec_ms - 1
        print(f"{name} over spec.apply: {100 * overhead:+.1f}% (target: within ±5%)")


if __name__ == "__main__":
    main()
