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

With ``--train``, the pieces of one train step (forward and backward of ``mean(output**2)``
with respect to params and input, as ``benchmarks.run`` times it) instead:

- ``train step``: the whole step as a user calls it (batch-first);
- ``time-major``: the same on `(T, B, D)` input;
- ``layer VJP``: the layer's forward and backward calls and the input's gradient (XLA's
  matmul after the backward call), given the output's cotangent: no loss, no transposes;
- ``forward call``: the forward FFI call keeping the gate activations;
- ``dx matmul``: XLA's `(T*B, G*H) @ (G*H, D)` of the input's gradient alone.

The backward FFI call is ``layer VJP - forward call - dx matmul``.

No environment variables are set: run it as a plain script.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp

from benchmarks.configs import CONFIGS
from benchmarks.models import spec_of
from benchmarks.run import round_robin
from jrnn.methods import compiled

# the configurations of one layer and one direction: the pieces below are one FFI call's
SINGLE = [n for n, c in CONFIGS.items() if c.num_layers == 1 and not c.bidirectional]


class Setup(NamedTuple):
    """One configuration's model and inputs, and the operands of its layer's FFI calls."""

    spec: object
    params: object
    x: jax.Array  # (B, T, D)
    xt: jax.Array  # (T, B, D)
    code: int  # the cell's code in jrnn.methods.compiled
    layer: tuple  # xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep, as the calls take them
    w_ih: jax.Array  # (G*H, D)
    zeros: jax.Array  # (B, H): h0, c0
    flops: float  # the matmul FLOPs of one forward pass


def setup(name: str) -> Setup:
    config = CONFIGS[name]
    spec = spec_of(config)
    params = spec.init(jax.random.key(0))
    p = params[0][0]
    b, t, d, h = config.batch, config.steps, config.input_size, config.hidden_size
    x = jax.random.normal(jax.random.key(1), (b, t, d))
    xt = jnp.swapaxes(x, 0, 1)
    zeros = jnp.zeros((b, h))
    no_projection = jnp.zeros((1,), jnp.float32)  # the (1,) placeholder of weight_hr
    layer = (
        xt, p["weight_ih"][None], p["bias_ih"][None], p["weight_hh"][None], p["bias_hh"][None],
        no_projection, zeros, zeros, jnp.ones((t, b), jnp.uint8),
    )  # fmt: skip
    flops = 2.0 * t * b * p["weight_ih"].shape[0] * (h + d)
    code = compiled._CODES[spec.cell.kernel]
    return Setup(spec, params, x, xt, code, layer, p["weight_ih"], zeros, flops)


def pieces(name: str) -> tuple[dict[str, object], float]:
    s = setup(name)
    t, b, d = s.xt.shape
    gh, h = s.w_ih.shape[0], s.spec.hidden_size
    apply = jax.jit(lambda p, x: s.spec.apply(p, x)[0])
    time_major = dataclasses.replace(s.spec, batch_first=False)
    apply_t = jax.jit(lambda p, x: time_major.apply(p, x)[0])

    def recurrence(save):
        return jax.jit(lambda layer: compiled._call_forward(s.code, 0, False, save, *layer)[0])

    forward, saving = recurrence(False), recurrence(True)
    a = jax.random.normal(jax.random.key(2), (t * b, h + d))
    w = jax.random.normal(jax.random.key(3), (h + d, gh))
    peak = jax.jit(lambda a, w: a @ w)
    return {
        "spec.apply": lambda: apply(s.params, s.x).block_until_ready(),
        "time-major": lambda: apply_t(s.params, s.xt).block_until_ready(),
        "FFI call": lambda: forward(s.layer).block_until_ready(),
        "+ gates kept": lambda: saving(s.layer).block_until_ready(),
        "matmul peak": lambda: peak(a, w).block_until_ready(),
    }, s.flops


def train_pieces(name: str) -> tuple[dict[str, object], float]:
    s = setup(name)
    t, b, _ = s.xt.shape

    def step(spec):
        return jax.jit(jax.grad(lambda p, x: jnp.mean(spec.apply(p, x)[0] ** 2), argnums=(0, 1)))

    train, train_t = step(s.spec), step(dataclasses.replace(s.spec, batch_first=False))
    dhs = jax.random.normal(jax.random.key(2), (t, b, s.spec.hidden_size))
    carry = (s.zeros, s.zeros) if s.spec.cell.kernel == "LSTM" else (s.zeros,)

    @jax.jit
    def vjp(layer):
        _, residuals = compiled._layer_fwd(s.code, 0, False, *layer)
        return compiled._layer_bwd(s.code, 0, False, residuals, (dhs, carry))

    forward = jax.jit(lambda layer: compiled._call_forward(s.code, 0, False, True, *layer)[:3])
    dgx = jax.random.normal(jax.random.key(3), (t * b, s.w_ih.shape[0]))
    dx = jax.jit(lambda dgx, w: dgx @ w)
    return {
        "train step": lambda: jax.block_until_ready(train(s.params, s.x)),
        "time-major": lambda: jax.block_until_ready(train_t(s.params, s.xt)),
        "layer VJP": lambda: jax.block_until_ready(vjp(s.layer)),
        "forward call": lambda: jax.block_until_ready(forward(s.layer)),
        "dx matmul": lambda: jax.block_until_ready(dx(dgx, s.w_ih)),
    }, 3 * s.flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=SINGLE, default="lstm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--train", action="store_true", help="the pieces of a train step")
    args = parser.parse_args(argv)
    calls, flops = (train_pieces if args.train else pieces)(args.config)
    times = round_robin(calls, args.reps * args.calls, warmup=2)  # ms
    print(
        f"{CONFIGS[args.config].describe()}; ISA {compiled.isa()}, "
        f"load {os.getloadavg()[0]:.2f}, {args.reps}x{args.calls} calls"
    )
    first = next(iter(times))
    total = statistics.median(times[first])
    medians = {key: statistics.median(values) for key, values in times.items()}
    for key, med in medians.items():
        extra = ""
        if key in ("FFI call", "+ gates kept", "matmul peak", "train step"):
            extra = f", matmuls at {flops / med / 1e6:.0f} GFLOP/s"
        print(f"{key:12s} {med:7.2f} ms  ({med / total:5.1%} of {first}{extra})")
    if args.train:
        backward = medians["layer VJP"] - medians["forward call"] - medians["dx matmul"]
        print(f"{'backward call':12s} {backward:7.2f} ms  (layer VJP - forward call - dx matmul)")


if __name__ == "__main__":
    main()
