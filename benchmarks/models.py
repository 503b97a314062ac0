"""What every benchmarked framework provides, and the jrnn model.

A :class:`Model` holds two ready-to-call closures, each running one forward or one train step
(forward and backward of ``mean(output**2)`` with respect to params and input) to completion.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from benchmarks.configs import Config

SPECS = {"lstm": jrnn.LSTM, "gru": jrnn.GRU, "rnn_tanh": jrnn.RNN}


class Model(NamedTuple):
    """One framework's model of one configuration, compiled and warmed up."""

    forward: Callable[[], Any]  # one forward pass, waited for
    train: Callable[[], Any]  # one forward + backward pass, waited for
    output: np.ndarray  # the forward output `(B, T, dirs*H)`
    compile_s: tuple[float, float] | None  # forward, train (None: not compiled ahead)
    memory_bytes: tuple[int, int] | None  # forward, train peak (None: not measured)


def compile_jax(fn: Callable[..., Any], *args: Any) -> tuple[Callable[[], Any], float, int | None]:
    """Jit-compile ``fn`` for ``args``.

    Returns:
        ``(run, seconds, memory)``: ``run()`` calls the executable on ``args`` and waits for it;
        ``seconds`` is the lower + compile time; ``memory`` is XLA's temp + output bytes (None
        when the backend does not report it).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = None if stats is None else stats.temp_size_in_bytes + stats.output_size_in_bytes
    return (lambda: jax.block_until_ready(compiled(*args))), seconds, memory


def jax_model(apply: Callable[[Any, jax.Array], jax.Array], params: Any, x: jax.Array) -> Model:
    """A :class:`Model` from ``apply(params, x) -> output`` (shared by jrnn and Flax)."""

    def loss(params: Any, x: jax.Array) -> jax.Array:
        return jnp.mean(apply(params, x) ** 2)

    forward, forward_s, forward_bytes = compile_jax(apply, params, x)
    train, train_s, train_bytes = compile_jax(jax.grad(loss, argnums=(0, 1)), params, x)
    memory = None if None in (forward_bytes, train_bytes) else (forward_bytes, train_bytes)
    return Model(forward, train, np.asarray(forward()), (forward_s, train_s), memory)


def spec_of(config: Config) -> jrnn.nn.Spec:
    """The jrnn spec of ``config`` (batch-first)."""
    return SPECS[config.cell](
        config.input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
    )


def remat_option(steps: int) -> dict[str, Any]:
    """The keywords that turn on rematerialisation in ``spec.apply``: chunks of ``sqrt(T)`` steps
    (``jrnn.Options.remat``)."""
    return {"remat": max(1, round(math.sqrt(steps)))}


def compiled_recurrence(device: str) -> bool:
    """Whether jrnn's default path on ``device`` is its compiled recurrence
    (``jrnn.methods.compiled``).

    When it is, the benchmark also times the pure-JAX scan, ``apply(..., method="scan")``, as
    ``jrnn-scan``.
    """
    return device == "cpu" and jrnn.methods.compiled.available()


def jrnn_model(
    spec: jrnn.nn.Spec, params: Any, x: jax.Array, options: dict[str, Any] | None = None
) -> Model:
    """jrnn's ``spec.apply`` (with extra keyword ``options``, e.g. for remat) as a Model."""
    options = options or {}
    return jax_model(lambda params, x: spec.apply(params, x, **options)[0], params, x)
