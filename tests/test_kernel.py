"""The compiled path (jrnn.methods.compiled) against the pure-JAX scan it replaces.

Oracle: the same layer with ``method="scan"`` (itself checked against a Python loop over the cell
in test_core and against PyTorch in test_parity). Shapes are chosen to reach every edge of the
C++ work split: hidden sizes that are not a multiple of its 32-unit panels, batches that are not
a multiple of its 16-row units or register tiles, two directions, padded sequences, and calls
large enough to run on every core (smaller ones run on one). The library holds its loops once per
instruction set; the tests run on the widest one this CPU has, and a few of them run again in a
subprocess under each narrower one (``JRNN_ISA``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import platform
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.methods import compiled as kernel

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the compiled recurrence is CPU-only"
)

SPECS = {
    "rnn_tanh": functools.partial(jrnn.RNN, nonlinearity="tanh"),
    "rnn_relu": functools.partial(jrnn.RNN, nonlinearity="relu"),
    "lstm": jrnn.LSTM,
    "gru": jrnn.GRU,
}


def close(actual, desired):
    """Equal up to float32 rounding: the two paths sum over steps and rows in other orders, so
    an entry that is a sum of thousands of terms with cancellation can be off by more than its
    own size times eps; the bound is relative to the array's largest entry."""
    scale = max(1.0, float(np.max(np.abs(desired))))
    np.testing.assert_allclose(actual, desired, rtol=2e-5, atol=1e-5 * scale)


def test_library_is_built_and_registered():
    """``pip install`` compiles jrnn/csrc/recurrence.cc; without it every test below is moot."""
    assert kernel.available(), kernel.load_error()


def _loss_and_grads(spec, params, x, h0, lengths, use_kernel, matmul_dtype=None):
    def loss(params, x, h0):
        method = "compiled" if use_kernel else "scan"
        out, h_n = spec.apply(
            params, x, h0, lengths=lengths, method=method, matmul_dtype=matmul_dtype
        )
        leaves = jax.tree.leaves(h_n)
        value = jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(a * jnp.sin(a)) for a in leaves)
        return value, (out, h_n)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    return grad(params, x, h0)


class Case(NamedTuple):
    """A stack of D = 6 inputs, random input and initial carry, and with ``padded`` random
    lengths (the first sequence full); ``proj``: the LSTM's ``proj_size``; ``bf16``: the
    layers' ``matmul_dtype``."""

    name: str
    hidden: int
    batch: int
    bidirectional: bool
    padded: bool
    steps: int = 7
    layers: int = 2
    proj: int = 0
    bf16: bool = False

    def build(self):
        """``(spec, params, x, h0, lengths)``."""
        projection = {"proj_size": self.proj} if self.proj else {}
        spec = SPECS[self.name](
            6, self.hidden, num_layers=self.layers, bidirectional=self.bidirectional, **projection
        )
        params = spec.init(jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (self.batch, self.steps, 6))
        carries = self.layers * spec.num_directions
        h0 = 0.5 * jax.random.normal(
            jax.random.key(2), (carries, self.batch, self.proj or self.hidden)
        )
        if self.name == "lstm":
            h0 = (h0, jax.random.normal(jax.random.key(3), (carries, self.batch, self.hidden)))
        lengths = None
        if self.padded:
            lengths = jax.random.randint(jax.random.key(4), (self.batch,), 1, self.steps + 1)
            lengths = lengths.at[0].set(self.steps)
        return spec, params, x, h0, lengths


def _agree(case, compiled, scan):
    """``case``'s compiled results against the scan path's: float32 up to rounding (:func:`close`),
    bf16 within 2e-3 of each array's largest entry (:func:`_near`; see
    test_bfloat16_compiled_equals_bfloat16_scan)."""
    jax.tree.map((lambda a, b: _near(a, b, 2e-3)) if case.bf16 else close, compiled, scan)


@functools.cache
def _results(case, method):
    """``((loss, (out, h_n)), grads)`` of :func:`_loss_and_grads` and the forward pass's
    ``(out, h_n)`` alone (the call that keeps no gate activations) of ``case`` on ``method``;
    cached, since the scan path's results are the reference of several tests."""
    spec, params, x, h0, lengths = case.build()
    dtype = jnp.bfloat16 if case.bf16 else None
    train = _loss_and_grads(spec, params, x, h0, lengths, method == "compiled", dtype)
    forward = jax.jit(
        lambda p: spec.apply(p, x, h0, lengths=lengths, method=method, matmul_dtype=dtype)
    )
    return train, forward(params)


@pytest.mark.parametrize(
    ("name", "hidden", "batch", "bidirectional", "padded"),
    [
        ("rnn_tanh", 40, 19, False, False),
        ("lstm", 40, 19, False, False),
        ("gru", 64, 5, True, True),
        ("rnn_relu", 64, 5, True, True),
        ("lstm", 33, 37, True, False),
        ("gru", 33, 37, True, False),
        ("lstm", 32, 16, False, True),
        ("rnn_tanh", 32, 16, False, True),
    ],
)
def test_compiled_equals_scan(name, hidden, batch, bidirectional, padded):
    """Outputs, final states and the gradients of params, input and h0 agree, and so do the
    outputs of a forward pass alone (the call that keeps no gate activations)."""
    case = Case(name, hidden, batch, bidirectional, padded)
    _agree(case, _results(case, "compiled"), _results(case, "scan"))


@pytest.mark.parametrize(
    ("hidden", "proj", "batch", "bidirectional", "padded", "steps", "layers"),
    [
        (40, 20, 19, False, False, 7, 2),  # P < 32: one partial panel of h
        (33, 7, 37, True, True, 7, 2),  # H and P not multiples of 32, batch of 16 + 16 + 5
        (64, 40, 5, True, True, 9, 1),  # P over a panel (32 + 8)
    ],
)
def test_compiled_equals_scan_with_a_projection(
    hidden, proj, batch, bidirectional, padded, steps, layers
):
    """``proj_size``: each step's h = m @ W_hr^T, in a second half of the step (its own
    barrier each way); outputs, final states and every gradient, W_hr's included, agree."""
    case = Case("lstm", hidden, batch, bidirectional, padded, steps, layers, proj)
    compiled = _results(case, "compiled")
    assert "weight_hr" in str(jax.tree.structure(compiled[0][1][0]))  # W_hr's gradient compared
    _agree(case, compiled, _results(case, "scan"))


@pytest.mark.parametrize(("name", "hidden", "proj"), [("lstm", 136, 0), ("gru", 150, 0),
                                                      ("lstm", 136, 100)])  # fmt: skip
def test_compiled_equals_scan_on_all_cores(name, hidden, proj):
    """A call large enough (over 50 MFLOP) to be split across the machine's cores, whose
    outputs (LSTM's gate activations 8.9 MB) span whole 2 MiB pages: the forward call asks for
    huge pages there (AdviseHugePages), a hint that must leave every result as it is."""
    spec = SPECS[name](6, hidden, bidirectional=True, **({"proj_size": proj} if proj else {}))
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 64, 6))
    lengths = jnp.arange(32) + 33
    h0 = jnp.zeros((2, 32, proj or hidden))
    h0 = (h0, jnp.zeros((2, 32, hidden))) if name == "lstm" else h0
    compiled = _loss_and_grads(spec, params, x, h0, lengths, True)
    scan = _loss_and_grads(spec, params, x, h0, lengths, False)
    jax.tree.map(close, compiled, scan)
    forward = jax.jit(lambda p, method: spec.apply(p, x, h0, lengths=lengths, method=method),
                      static_argnums=1)  # fmt: skip
    jax.tree.map(close, forward(params, "compiled"), forward(params, "scan"))


def test_a_forward_pass_keeps_two_steps_of_cell_states():
    """Undifferentiated, the call keeps the cell states and each step's m of the last two
    steps only, not of every step: XLA's memory for a projected bidirectional LSTM's forward
    pass is 2.3x its output (every step's c and m, H = 32 against P = 8 units: 10.3x)."""
    spec = jrnn.LSTM(4, 32, bidirectional=True, proj_size=8)
    params = spec.init(jax.random.key(0))
    x = jnp.ones((4, 256, 4))
    forward = jax.jit(lambda p, x: spec.apply(p, x, method="compiled")[0])
    memory = forward.lower(params, x).compile().memory_analysis()
    output = forward(params, x).size * 4
    # hs, time-major, and the batch-first output: 2x; every step's c and m would add 8x
    assert memory.temp_size_in_bytes + memory.output_size_in_bytes < 3 * output


@pytest.mark.parametrize(
    ("name", "hidden", "batch", "bidirectional", "padded", "steps", "layers", "proj"),
    [
        ("lstm", 33, 19, True, True, 7, 2, 0),
        ("gru", 40, 5, True, False, 7, 1, 0),
        ("rnn_tanh", 32, 16, False, True, 7, 1, 0),
        ("lstm", 136, 32, True, False, 64, 1, 0),  # over 50 MFLOP: on every core
        ("lstm", 40, 19, True, True, 7, 2, 20),  # m_t and the projection's cotangent rounded
    ],
)
def test_bfloat16_compiled_equals_bfloat16_scan(
    name, hidden, batch, bidirectional, padded, steps, layers, proj
):
    """``matmul_dtype=jnp.bfloat16``: both paths round the same operands (x_t, h_{t-1}, the
    weights, the gates' cotangents) and sum in float32. One layer agrees to float32 rounding
    (1e-7 of the largest entry); deeper, an operand that float32 rounding moves across a
    bfloat16 rounding boundary moves by one bf16 step (2^-8): measured up to 1e-3 here, as
    much as the scan path itself moves when its weights are scaled by 1 + 2e-7. Both stay
    within bf16 error of the float32 result."""
    case = Case(name, hidden, batch, bidirectional, padded, steps, layers, proj, bf16=True)
    compiled, scan = _results(case, "compiled"), _results(case, "scan")
    exact = _results(case._replace(bf16=False), "scan")
    _agree(case, compiled, scan)  # with the forward pass alone
    jax.tree.map(lambda a, b: _near(a, b, 3e-2), compiled, exact)
    # rounded for real: off float32 by far more than float32 rounding
    out, exact_out = compiled[0][0][1][0], exact[0][0][1][0]
    assert float(np.max(np.abs(out - exact_out))) > 1e-4


def _near(actual, desired, tolerance):
    """A float32 ``actual`` within ``tolerance`` of ``desired``'s largest entry (at least 1)."""
    scale = max(1.0, float(np.max(np.abs(desired))))
    assert actual.dtype == np.float32 and actual.shape == desired.shape
    assert float(np.max(np.abs(actual - desired))) <= tolerance * scale


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_threads_get_their_cpu_sets_back_after_a_call():
    """A call on every core pins its caller to its core for the call only; the library's own
    helper threads (named jrnn-helper), which outlive calls, stay one on each core."""
    allowed = os.sched_getaffinity(0)
    spec = jrnn.GRU(6, 150, bidirectional=True)  # over 50 MFLOP: runs on every core
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 64, 6))
    run = jax.jit(lambda p: spec.apply(p, x, method="compiled"))
    jax.block_until_ready(run(params))
    helpers = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # the thread ended
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
            cpus = os.sched_getaffinity(int(tid))
            if name == "jrnn-helper":
                helpers.append(cpus)
            else:
                assert cpus == allowed, f"thread {tid} ({name})"
    if len(allowed) > 1:
        assert sorted(helpers) == sorted({c} for c in allowed)
    jax.tree.map(close, run(params), spec.apply(params, x, method="scan"))  # pool reused


def test_calls_from_two_threads_at_once():
    """Two Python threads running multi-core train steps at the same time (JAX drops the GIL
    while a computation runs): each call borrows the helpers it finds free, or starts its own,
    and waits for its own (the backward call's workers write the weight gradients after their
    last barrier); every gradient equals the scan's."""
    spec = jrnn.LSTM(6, 136, bidirectional=True)  # over 50 MFLOP: on every core
    params = spec.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 32, 64, 6))

    def grad(method):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(spec.apply(p, x, method=method)[0] ** 2)))

    run = grad("compiled")
    wanted = [grad("scan")(params, x) for x in xs]
    jax.block_until_ready(run(params, xs[0]))  # compiled before the threads start

    def calls(i):
        return [jax.device_get(run(params, xs[i])) for _ in range(6)]

    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        results = list(threads.map(calls, range(2)))
    for outputs, desired in zip(results, wanted, strict=True):
        for out in outputs:
            jax.tree.map(close, out, desired)


@pytest.mark.parametrize("proj", [0, 6])
def test_compiled_path_under_vmap_remat_and_unbatched_input(proj):
    spec = jrnn.LSTM(3, 20, bidirectional=True, proj_size=proj)
    params = spec.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (4, 2, 9, 3))  # 4 independent batches

    def run(x, use_kernel, remat=None):
        return spec.apply(params, x, method="compiled" if use_kernel else "scan", remat=remat)

    ensemble = jax.jit(jax.vmap(lambda x: run(x, True)))(xs)
    jax.tree.map(close, ensemble, jax.vmap(lambda x: run(x, False))(xs))

    def loss(params, remat):
        out, (h, c) = spec.apply(params, xs[0], method="compiled", remat=remat)
        return jnp.sum(out**2) + jnp.sum(h * jnp.sum(c, -1, keepdims=True))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    jax.tree.map(close, grad(params, 4), grad(params, None))
    jax.tree.map(close, run(xs[0, 0], True), run(xs[0, 0], False))  # (T, D) input


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("matmul_dtype", [None, jnp.bfloat16])
def test_a_nan_in_the_input_reaches_the_output_as_in_the_scan(name, matmul_dtype):
    """A diverging run must show: the gate math's clamps (exp, tanh, relu) let a NaN through
    instead of turning it into a bound, so the NaNs land where the scan path's do."""
    spec = SPECS[name](6, 40)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 5, 6)).at[0, 2, 1].set(jnp.nan)

    def nans(method):
        out = spec.apply(params, x, method=method, matmul_dtype=matmul_dtype)[0]
        return np.isnan(np.asarray(out))

    expected = nans("scan")
    assert expected.any()
    np.testing.assert_array_equal(nans("compiled"), expected)


def test_default_uses_the_compiled_path_where_it_applies():
    """``method="auto"`` lowers to the FFI call for float32 and to the scan otherwise."""
    spec = jrnn.GRU(3, 8)
    params = spec.init(jax.random.key(0))
    x = jnp.ones((2, 4, 3))

    def hlo(**options):
        return jax.jit(lambda p: spec.apply(p, x, **options)[0]).lower(params).as_text()

    assert "jrnn_recurrence_fwd" in hlo()
    assert "jrnn_recurrence_fwd" not in hlo(method="scan")
    assert "jrnn_recurrence_fwd" in hlo(matmul_dtype=jnp.bfloat16)
    assert "jrnn_recurrence_fwd" not in hlo(matmul_dtype=jnp.float16)


def test_method_compiled_says_why_it_cannot_run():
    x = jnp.ones((2, 4, 3))
    gru = jrnn.GRU(3, 8)
    with pytest.raises(ValueError, match=r"'compiled' cannot run this layer: .*bfloat16 only"):
        gru.apply(gru.init(jax.random.key(0)), x, method="compiled", matmul_dtype=jnp.float16)
    with pytest.raises(ValueError, match=r"'compiled' cannot run this layer: .*float32 only"):
        gru.apply(
            gru.init(jax.random.key(0), jnp.bfloat16), x.astype(jnp.bfloat16), method="compiled"
        )


def test_layer_rejects_inconsistent_arguments():
    """Python checks what it reshapes; the C++ side checks its buffers and names the one off."""
    xs, h0 = jnp.zeros((4, 2, 5)), jnp.zeros((1, 2, 8))
    w_ih, w_hh = jnp.zeros((1, 4 * 8, 5)), jnp.zeros((1, 4 * 8, 8))  # LSTM-shaped weights

    def call(name, xs=xs, w_ih=w_ih, reverse=(False,)):
        return kernel.call(name, xs, w_ih, None, w_hh, None, h0, h0, None, reverse)

    gates = r"expected w_hh \(k, G\*H, H\) with G = 3, got \(1, 32, 8\)"  # GRU has 3 gates
    with pytest.raises(Exception, match=gates):
        call("GRU")
    with pytest.raises(ValueError, match=r"weight_ih: expected \(1, 32, 6\) .*, got \(1, 32, 5\)"):
        call("LSTM", xs=jnp.zeros((4, 2, 6)))
    with pytest.raises(ValueError, match=r"reverse: expected one flag per direction \(1\)"):
        call("LSTM", reverse=())
    with pytest.raises(ValueError, match=r"kernel: expected one of .*, got 'gru'"):
        call("gru")
    w_hr = jnp.zeros((1, 8, 7))  # a projection from H = 7: w_hh would be (1, 28, 8)
    with pytest.raises(ValueError, match=r"weight_hr: expected an LSTM's \(1, 8, H\) .* for GRU"):
        kernel.call("GRU", xs, w_ih, None, w_hh, None, h0, None, None, (False,), weight_hr=w_hr)
    c0 = jnp.zeros((1, 2, 7))
    projected = r"expected w_hh \(k, G\*H, H\) with G = 4 and H = 7 \(w_hr\), got \(1, 32, 8\)"
    with pytest.raises(Exception, match=projected):
        kernel.call("LSTM", xs, w_ih, None, w_hh, None, h0, c0, None, (False,), weight_hr=w_hr)


def test_forward_mode_needs_the_scan_path():
    """The compiled path is a custom VJP: jax.jvp raises, and ``method="scan"`` is the way."""
    spec = jrnn.RNN(3, 4)
    params = spec.init(jax.random.key(0))
    x = jnp.ones((2, 5, 3))

    def f(x, use_kernel):
        return jnp.sum(spec.apply(params, x, method="compiled" if use_kernel else "scan")[0])

    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: f(x, True), (x,), (x,))
    jax.jvp(lambda x: f(x, False), (x,), (x,))


def test_runs_the_widest_instruction_set_unless_one_is_forced():
    forced = os.environ.get(kernel.ISA_VARIABLE)
    assert kernel.isa() == (forced or kernel.isas()[0])
    assert kernel.isas()[-1] == "baseline"


def _python(args, isa):
    """This Python, with JRNN_ISA set to isa."""
    env = {**os.environ, kernel.ISA_VARIABLE: isa}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=600
    )


# Six of the comparisons above, which reach all of the loops' code (every cell, partial panels
# and tiles, both directions, padding, a projection, bf16 with and without the dot-product
# kernel): their compiled results under each narrower instruction set against the scan path's.
NARROWER = [
    Case("lstm", 33, 37, True, False),
    Case("gru", 64, 5, True, True),
    Case("rnn_tanh", 40, 19, False, False),
    Case("lstm", 33, 37, True, True, proj=7),
    Case("lstm", 33, 19, True, True, bf16=True),
    Case("lstm", 40, 19, True, True, proj=20, bf16=True),
]


def _save_compiled_results(path):
    """Writes this process's instruction set and the compiled results of NARROWER to ``path``
    (``.npz``): what ``python tests/test_kernel.py PATH`` does, under a forced ``JRNN_ISA``."""
    assert kernel.available(), kernel.load_error()
    leaves = {
        f"{i}/{j}": np.asarray(leaf)
        for i, case in enumerate(NARROWER)
        for j, leaf in enumerate(jax.tree.leaves(_results(case, "compiled")))
    }
    np.savez(path, isa=kernel.isa(), **leaves)


@pytest.mark.skipif(
    bool(os.environ.get(kernel.ISA_VARIABLE)), reason="an instruction set is forced"
)
@pytest.mark.parametrize("isa", kernel.isas()[1:])
def test_compiled_equals_scan_under_each_narrower_instruction_set(isa, tmp_path):
    """A subprocess under ``JRNN_ISA=isa`` computes NARROWER on the compiled path; here they
    are compared with the scan path (float32 as in test_compiled_equals_scan, bf16 as in
    test_bfloat16_compiled_equals_bfloat16_scan)."""
    path = tmp_path / "compiled.npz"
    run = _python([__file__, str(path)], isa)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    references = [_results(case, "scan") for case in NARROWER]
    with np.load(path) as saved:
        assert str(saved["isa"]) == isa
        assert len(saved.files) == 1 + len(jax.tree.leaves(references))
        for i, (case, scan) in enumerate(zip(NARROWER, references, strict=True)):
            leaves, tree = jax.tree.flatten(scan)
            compiled = tree.unflatten([saved[f"{i}/{j}"] for j in range(len(leaves))])
            _agree(case, compiled, scan)


@pytest.mark.parametrize("isa", ["sse", "avx512"])
def test_a_forced_instruction_set_must_be_one_this_cpu_runs(isa):
    """Else it is the load error: ``method="compiled"`` says it, ``"auto"`` takes the scan."""
    if isa in kernel.isas():
        pytest.skip(f"this CPU runs {isa}")
    code = """if True:
        import jax, jax.numpy as jnp, jrnn
        spec = jrnn.RNN(2, 3)
        params, x = spec.init(jax.random.key(0)), jnp.ones((1, 2, 2))
        print(spec.apply(params, x)[0].shape)
        spec.apply(params, x, method="compiled")
    """
    run = _python(["-c", code], isa)
    assert run.stdout.strip() == "(1, 2, 3)"
    if isa == "avx512" and platform.machine() == "x86_64":
        reason = "this CPU cannot run it; it runs " + ", ".join(kernel.isas())
    else:
        reason = "expected one of "
    message = f"method: 'compiled' cannot run this layer: {kernel.ISA_VARIABLE}={isa}: {reason}"
    assert message in run.stderr


if __name__ == "__main__":
    _save_compiled_results(sys.argv[1])
