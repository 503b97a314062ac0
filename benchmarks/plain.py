"""jrnn vs ``torch.nn`` as a user's own script runs them: no environment variables, no re-exec.

    python -m benchmarks.plain [--configs lstm lstm2bi gru rnn] [--rounds 3] [--calls 15]

Unlike :mod:`benchmarks.run` this process never touches ``GLIBC_TUNABLES``, ``OMP_*`` or
``XLA_FLAGS``: it is what ``python my_script.py`` gets; ``--tune`` adds what such a script can
do for itself, a call of :func:`jrnn.malloc.tune` first thing. Torch runs with
``torch.set_num_threads(<cores>)``, its input without ``requires_grad`` for the forward pass.
For each configuration it builds the torch module, copies its weights into jrnn
(``jrnn.from_torch``), warms every function up, then runs ``--rounds`` rounds; a round times
``--calls`` calls of each of jrnn's forward (its default method, then ``method="scan"``), its
train step and torch's, interleaved (:func:`benchmarks.run.round_robin`). It prints each
round's medians and the ratios of the medians of all calls (below 1: jrnn is faster).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jrnn
from benchmarks.configs import CONFIGS, MAIN
from benchmarks.peers import torch_module
from benchmarks.run import round_robin
from jrnn import malloc


def functions(name: str, seed: int = 0) -> dict[str, object]:
    """The timed calls of one configuration, each returning once its result is computed."""
    config = CONFIGS[name]
    module = torch_module(config, "cpu", seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((config.batch, config.steps, config.input_size), np.float32)
    spec, params = jrnn.from_torch(module)
    xj = jnp.asarray(x)

    def jrnn_forward(method: str):
        fn = jax.jit(lambda p, x: spec.apply(p, x, method=method)[0])
        return lambda: fn(params, xj).block_until_ready()

    def loss(p, x):
        return jnp.mean(spec.apply(p, x)[0] ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    xt = torch.from_numpy(x)
    xt_grad = xt.clone().requires_grad_(True)
    leaves = [*module.parameters(), xt_grad]

    def torch_forward():
        with torch.no_grad():
            return module(xt)[0]

    def torch_train():
        return torch.autograd.grad((module(xt_grad)[0] ** 2).mean(), leaves)

    out = np.asarray(jrnn_forward("auto")())
    np.testing.assert_allclose(out, torch_forward().numpy(), atol=1e-4, rtol=0)
    return {
        "jrnn fwd": jrnn_forward("auto"),
        "jrnn-scan fwd": jrnn_forward("scan"),
        "torch fwd": torch_forward,
        "jrnn train": lambda: jax.block_until_ready(grad(params, xj)),
        "torch train": torch_train,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(MAIN))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument(
        "--tune", action="store_true", help="call jrnn.malloc.tune() first, as a user's script can"
    )
    args = parser.parse_args(argv)
    if args.tune and not malloc.tune():
        raise SystemExit("--tune: this libc is not glibc")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"ISA {jrnn.methods.compiled.isa()}, load {os.getloadavg()[0]:.2f}, "
        f"malloc {'tuned (jrnn.malloc.tune())' if args.tune else 'glibc defaults'}"
    )
    ratios: dict[str, list[float]] = {"fwd": [], "train": []}
    for name in args.configs:
        calls = functions(name)
        times: dict[str, list[float]] = {key: [] for key in calls}
        for r in range(args.rounds):  # the first round also warms up: compile, first touch
            for key, ms in round_robin(calls, args.calls, 2 if r == 0 else 0).items():
                times[key] += ms
            row = ", ".join(
                f"{k} {statistics.median(v[-args.calls :]):.1f}" for k, v in times.items()
            )
            print(f"{name} round {r + 1} (ms): {row}")
        med = {k: statistics.median(v) for k, v in times.items()}
        fwd, train = med["jrnn fwd"] / med["torch fwd"], med["jrnn train"] / med["torch train"]
        ratios["fwd"].append(fwd)
        ratios["train"].append(train)
        print(
            f"{name}: jrnn/torch fwd {fwd:.2f}x, train {train:.2f}x; "
            f"jrnn-scan/torch fwd {med['jrnn-scan fwd'] / med['torch fwd']:.2f}x"
        )
    for kind, values in ratios.items():
        geo = math.exp(statistics.mean(math.log(v) for v in values))
        print(f"geometric mean jrnn/torch {kind}: {geo:.2f}x over {', '.join(args.configs)}")


if __name__ == "__main__":
    main()
