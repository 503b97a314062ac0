"""Smoke tests of the benchmark harness (``python -m benchmarks.run``); nothing here is timed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jrnn
from jrnn import malloc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """The ``benchmarks`` package, importable from the repository root."""
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.configs
    import benchmarks.models
    import benchmarks.run

    return benchmarks


def test_quick_run_has_every_framework_and_matches_torch(bench, tmp_path):
    out = tmp_path / "table.md"
    argv = ["--quick", "--configs", "lstm", "--reps", "1", "--warmup", "0", "--unroll", "3"]
    argv += ["--out", str(out)]
    bench.run.main(argv)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["notes"] == []  # no framework failed
    rows = {row["framework"]: row for row in data["rows"]}
    compiled = bench.models.compiled_recurrence("cpu")  # then the scan path is timed too
    expected = {"jrnn", "jrnn-unroll3", "torch", "flax"} | ({"jrnn-scan"} if compiled else set())
    assert set(rows) == expected
    for jrnn_row in (name for name in rows if name.startswith("jrnn")):
        assert rows[jrnn_row]["check_passed"] is True
        assert rows[jrnn_row]["max_diff"] <= 1e-4
    assert all(row["forward_ms"] > 0 and row["train_ms"] > 0 for row in rows.values())
    table = out.read_text()
    for framework in rows:
        assert f"| lstm | {framework} |" in table


def test_run_keeps_glibc_defaults_unless_asked_for_the_tuned_allocator(bench, tmp_path):
    """A plain run times every framework under the allocator a user's script gets; with
    ``--tuned-malloc`` the process restarts itself with ``jrnn.malloc.TUNABLES`` first."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    argv = ["--quick", "--configs", "rnn", "--frameworks", "jrnn", "--reps", "1", "--warmup", "0"]
    seen = {}
    for flag in ([], ["--tuned-malloc"]):
        out = tmp_path / f"table{len(flag)}.md"
        command = [sys.executable, "-m", "benchmarks.run", *argv, *flag, "--out", str(out)]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        seen[bool(flag)] = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert seen[False]["glibc_tunables"] == "(not set)"
    assert seen[True]["glibc_tunables"] == malloc.TUNABLES


def test_breakdown_times_every_piece(bench, capsys):
    """``python -m benchmarks.breakdown`` calls the compiled path's private FFI wrapper, whose
    signature moves with the C++ call: one round of one call keeps the two in step."""
    import benchmarks.breakdown

    if not bench.models.compiled_recurrence("cpu"):
        pytest.skip("the compiled recurrence is not built")
    benchmarks.breakdown.main(["--config", "rnn", "--reps", "1", "--calls", "1"])
    out = capsys.readouterr().out
    for piece in ("spec.apply", "time-major", "FFI call", "+ gates kept", "matmul peak"):
        assert f"{piece} " in out and " ms " in out.split(piece, 1)[1].splitlines()[0]
    for config in ("rnn", "lstm"):  # LSTM: the backward call's two carry cotangents
        benchmarks.breakdown.main(["--config", config, "--train", "--reps", "1", "--calls", "1"])
        out = capsys.readouterr().out
        for piece in ("train step", "layer VJP", "forward call", "dx matmul", "backward call"):
            assert f"{piece} " in out and " ms " in out.split(piece, 1)[1].splitlines()[0]


def test_forward_flops_counts_every_layer_and_direction(bench):
    configs, forward_flops = bench.configs.CONFIGS, bench.configs.forward_flops
    # LSTM 1 layer: 2 * T * B * 4H * (D + H)
    assert forward_flops(configs["lstm"]) == 2 * 128 * 32 * 1024 * (128 + 256)
    # 2 bidirectional layers; the second layer reads both directions of the first (2H inputs)
    first, second = 2 * 128 * 32 * 1024 * (128 + 256), 2 * 128 * 32 * 1024 * (512 + 256)
    assert forward_flops(configs["lstm2bi"]) == 2 * first + 2 * second
    assert forward_flops(configs["rnn"]) == 2 * 128 * 32 * 256 * (128 + 256)


def test_round_robin_runs_every_task_twice_per_rep_in_rotating_order(bench):
    calls = []
    tasks = {task: (lambda task=task: calls.append(task)) for task in ("a", "b", "c")}
    runs = bench.run.round_robin(tasks, reps=4, warmup=1)
    assert {task: len(times) for task, times in runs.items()} == {"a": 4, "b": 4, "c": 4}
    assert len(calls) == 3 + 4 * 6
    reps = [calls[i : i + 6] for i in range(3, 27, 6)]  # after the warm-up round
    # each task twice in a row (the second call is the timed one), every task once per rep
    assert all(rep[0::2] == rep[1::2] and sorted(rep[0::2]) == ["a", "b", "c"] for rep in reps)
    assert [rep[0] for rep in reps] == ["a", "b", "c", "a"]


def test_remat_option_is_a_jrnn_option_of_sqrt_t_steps_that_changes_no_number(bench):
    spec = jrnn.LSTM(3, 4)
    assert bench.models.remat_option(10_000) == {"remat": 100}
    options = bench.models.remat_option(9)
    assert jrnn.Options(**options).remat == 3
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 3))
    np.testing.assert_allclose(
        spec.apply(params, x, **options)[0], spec.apply(params, x)[0], atol=1e-6
    )
