"""Where the compiled LSTM's forward pass spends its time: ``python -m benchmarks.breakdown``.

Times, in one process and interleaved (medians of ``--reps`` rounds of ``--calls`` calls), the
pieces of one batch-first forward pass on the compiled path (:mod:`jrnn.methods.compiled`) of the
``--config`` model, and torch's forward on the same weights:

- ``spec.apply``: the whole pass as a user calls it (batch-first input and output);
- ``time-major``: the same on `(T, B, D)` input, without the two transposes;
- ``FFI call``: the compiled call alone on time-major input, input projection and loop over
  time, as a forward pass runs it (no gate activations kept);
- ``+ gates kept``: the same call as the forward half of a train step runs it, writing the
  gate activations `(T, B, G*H)` for the backward pass;
- ``matmul peak``: a jitted float32 matmul of the same FLOPs as the call's matmuls, as one
  `(T*B, H + D) @ (H + D, G*H)`: what the cores do without the time dependence.

No environment variables are set: run it as a plain script.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks.configs import CONFIGS
from benchmarks.models import spec_of
from benchmarks.run import round_robin
from jrnn.methods import compiled

# the configurations of one layer and one direction: the pieces below are one FFI call's
SINGLE = [n for n, c in CONFIGS.items() if c.num_layers == 1 and not c.bidirectional]


def pieces(name: str) -> dict[str, object]:
    config = CONFIGS[name]
    spec = spec_of(config)
    params = spec.init(jax.random.key(0))
    p = params[0][0]
    b, t, d, h = config.batch, config.steps, config.input_size, config.hidden_size
    x = jax.random.normal(jax.random.key(1), (b, t, d))
    xt = jnp.swapaxes(x, 0, 1)
    code = compiled._CODES[spec.cell.kernel]
    w_ih, b_ih = p["weight_ih"][None], p["bias_ih"][None]
    w_hh, b_hh = p["weight_hh"][None], p["bias_hh"][None]
    gh = w_hh.shape[1]
    zeros = jnp.zeros((b, h))
    keep = jnp.ones((t, b), jnp.uint8)
    no_projection = jnp.zeros((1,), jnp.float32)  # the (1,) placeholder of weight_hr
    apply = jax.jit(lambda p, x: spec.apply(p, x)[0])
    time_major = dataclasses.replace(spec, batch_first=False)
    apply_t = jax.jit(lambda p, x: time_major.apply(p, x)[0])

    def recurrence(save):
        return jax.jit(
            lambda xt: compiled._call_forward(
                code, 0, False, save, xt, w_ih, b_ih, w_hh, b_hh, no_projection, zeros, zeros, keep
            )[0]
        )

    forward, saving = recurrence(False), recurrence(True)
    a = jax.random.normal(jax.random.key(2), (t * b, h + d))
    w = jax.random.normal(jax.random.key(3), (h + d, gh))
    peak = jax.jit(lambda a, w: a @ w)
    return {
        "spec.apply": lambda: apply(params, x).block_until_ready(),
        "time-major": lambda: apply_t(params, xt).block_until_ready(),
        "FFI call": lambda: forward(xt).block_until_ready(),
        "+ gates kept": lambda: saving(xt).block_until_ready(),
        "matmul peak": lambda: peak(a, w).block_until_ready(),
    }, 2.0 * t * b * gh * (h + d)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=SINGLE, default="lstm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args(argv)
    calls, flops = pieces(args.config)
    times = round_robin(calls, args.reps * args.calls, warmup=2)  # ms
    print(
        f"{CONFIGS[args.config].describe()}; ISA {compiled.isa()}, "
        f"load {os.getloadavg()[0]:.2f}, {args.reps}x{args.calls} calls"
    )
    total = statistics.median(times["spec.apply"])
    for key, values in times.items():
        med = statistics.median(values)
        extra = ""
        if key in ("FFI call", "+ gates kept", "matmul peak"):
            extra = f", matmuls at {flops / med / 1e6:.0f} GFLOP/s"
        print(f"{key:12s} {med:7.2f} ms  ({med / total:5.1%} of spec.apply{extra})")


if __name__ == "__main__":
    main()
