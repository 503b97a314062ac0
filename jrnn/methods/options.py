"""The per-call options of a recurrent layer, declared once.

Every level that runs layers (:meth:`jrnn.LSTM.apply`, :func:`jrnn.stack.apply`,
:func:`jrnn.scan`) takes these as keywords and passes them down unchanged as one
:class:`Options` record; none of them changes the result beyond float rounding, except
``matmul_dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

METHODS = ("auto", "scan", "compiled", "associative", "deer", "quasi-deer", "elk")


@dataclasses.dataclass(frozen=True)
class Solver:
    """Controls of the Newton solvers, methods ``"deer"``, ``"quasi-deer"`` and ``"elk"``
    (:mod:`jrnn.methods.deer`).

    Attributes:
        tol: converged when every ``|s_t - f(s_{t-1})|`` (flat carry against one step from the
            one before) is at most ``tol``; None: 1e-10 for float64 states, else 1e-5.
        max_iter: the most Newton iterations; a layer that has not converged by then (or whose
            iterates diverge) runs the sequential loop instead. ``T`` iterations always suffice
            in exact arithmetic.
        damping: the initial Levenberg-Marquardt damping (it adapts per sequence); None: 1 for
            ``"elk"``, 0 (plain Newton) for the others. A positive damping makes
            ``"quasi-deer"`` quasi-ELK.
    """

    tol: float | None = None
    max_iter: int = 100
    damping: float | None = None

    def __post_init__(self) -> None:
        def number(value):
            return isinstance(value, int | float) and not isinstance(value, bool)

        if self.tol is not None and not (number(self.tol) and self.tol > 0):
            raise ValueError(f"tol: expected a positive number or None, got {self.tol!r}")
        if not (number(self.max_iter) and isinstance(self.max_iter, int) and self.max_iter >= 0):
            raise ValueError(f"max_iter: expected a non-negative integer, got {self.max_iter!r}")
        if self.damping is not None and not (number(self.damping) and self.damping >= 0):
            raise ValueError(f"damping: expected a number >= 0 or None, got {self.damping!r}")


@dataclasses.dataclass(frozen=True)
class Options:
    """How a layer runs over time.

    Attributes:
        method: ``"auto"`` (default) picks, per layer, the fastest path that can run it (see
            :func:`jrnn.methods.resolve`); ``"scan"`` is the pure-JAX ``lax.scan``, the
            reference every other path is tested against; ``"compiled"`` is the C++ loop of
            :mod:`jrnn.methods.compiled` (CPU, float32, built-in cells, no projection; an error
            says why it cannot run a layer; reverse-mode derivatives only, where the others
            also have ``jax.jvp`` and ``jax.jacfwd``); ``"associative"`` is the pure-JAX
            ``jax.lax.associative_scan`` of :mod:`jrnn.methods.associative`, for cells with an
            associative form (minGRU, minLSTM, LRU); ``"deer"``, ``"quasi-deer"`` and ``"elk"``
            find all states at once by Newton's method (:mod:`jrnn.methods.deer`).
        unroll: ``jax.lax.scan`` unrolling of the scan path, a speed knob; None picks one per
            backend (:func:`jrnn.methods.scan.default_unroll`: 16 on GPU, else 1).
        remat: for long sequences: recompute activations in chunks of ``remat`` steps during
            the backward pass, so memory grows as ``T / remat + remat`` rather than ``T``
            (``remat`` near ``sqrt(T)`` is best). Only a differentiated call runs in chunks:
            undifferentiated (evaluation, sampling) it is the same program as without ``remat``.
        matmul_dtype: mixed precision: round the operands of every matmul to this dtype
            (``jnp.bfloat16`` uses the bf16 matrix units of recent CPUs and GPUs) while products,
            gates and states stay in the input's dtype. None (default): exact. Needs a cell with
            ``with_matmul_dtype``.
        solver: the tolerance, iteration budget and damping of the Newton methods
            (:class:`Solver`).
    """

    method: str = "auto"
    unroll: int | bool | None = None
    remat: int | None = None
    matmul_dtype: Any = None
    solver: Solver = Solver()

    def __post_init__(self) -> None:
        if not isinstance(self.solver, Solver):
            raise TypeError(f"solver: expected a jrnn.methods.Solver, got {self.solver!r}")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.remat is not None and (
            isinstance(self.remat, bool) or not isinstance(self.remat, int) or self.remat < 1
        ):
            raise ValueError(f"remat: expected a positive integer, got {self.remat!r}")
        if self.matmul_dtype is not None:
            try:
                floating = jnp.issubdtype(self.matmul_dtype, jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise TypeError(
                    f"matmul_dtype: expected a floating-point dtype or None, "
                    f"got {self.matmul_dtype!r}"
                )

    @classmethod
    def of(cls, options: dict[str, Any]) -> Options:
        """The record of keyword ``options``, naming any keyword that is not an option."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for name in options:
            if name not in fields:
                raise TypeError(f"{name}: not an option; expected one of {fields}")
        return cls(**options)
