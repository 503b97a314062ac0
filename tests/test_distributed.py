"""Training across processes: 2 processes x 2 CPU devices train as 1 process x 4 devices.

Each run is ``python -m jrnn train lm`` in fresh processes (the device count is fixed by
``XLA_FLAGS`` before JAX starts, and ``jax.distributed`` is joined once per process). The
processes of the 2-process run find each other through ``--coordinator`` on localhost and sum
gradients with gloo. The schedule is constant, so epoch 1 of a 2-epoch run is a 1-epoch run.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrnn.training.cli import app

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for one run, whose processes are killed past it
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "runs", "home")
TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "8", "--seq-len", "16"]
TINY += ["--schedule", "constant", "--lr", "0.01"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(text: Path, out: Path, epochs: int, *, processes: int, devices: int, resume=False):
    """One ``jrnn train lm`` run in ``processes`` processes of ``devices`` CPU devices each;
    returns each process's stdout."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # the runs share their compilations (most of their time on a 2-core CPU) through jax's cache
    env["JAX_COMPILATION_CACHE_DIR"] = str(text.parent / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    args = [sys.executable, "-m", "jrnn", "train", "lm", "--text", str(text), "--out", str(out)]
    args += [*TINY, "--epochs", str(epochs), *(["--resume"] if resume else [])]
    if processes > 1:
        args += ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(processes)]
    procs = [
        subprocess.Popen(
            args + (["--process-id", str(i)] if processes > 1 else []),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:  # a run past its timeout: SIGKILL (jax catches SIGTERM)
            p.kill()
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, (stdout + stderr).decode()[-3000:]
    return [stdout.decode() for stdout, _ in outputs]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def losses(curve: list) -> list[float]:
    return [loss for _, loss in curve]


@pytest.mark.slow
def test_two_processes_train_as_one_with_four_devices(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(random.Random(0).choices(WORDS, k=700)), encoding="utf-8")
    two, one = tmp_path / "two", tmp_path / "one"
    run(text, one, 2, processes=1, devices=4)
    stdout = run(text, two, 1, processes=2, devices=2)

    m2, m1 = metrics(two), metrics(one)
    n = m2["steps"]  # one epoch
    # process 0 reports; process 1 prints nothing of its own (gloo prints its connections)
    assert f"steps {n} " in stdout[0] and "sample" in stdout[0]
    assert "steps" not in stdout[1] and "sample" not in stdout[1]
    assert (m2["processes"], m2["devices"], m1["processes"], m1["devices"]) == (2, 4, 1, 4)
    # the same global batches and params: the same loss curve, up to the order of the sums
    assert losses(m2["loss_curve"]) == pytest.approx(losses(m1["loss_curve"])[:n], rel=1e-5)

    # one checkpoint, written by both processes together, with one record
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [str(n)]
    step_dir = two / "checkpoints" / str(n)
    assert [p.name for p in step_dir.glob("jrnn.json*")] == ["jrnn.json"]

    # resumed in one process, it continues the 1-process run's curve
    run(text, two, 2, processes=1, devices=4, resume=True)
    resumed = metrics(two)
    assert [step for step, _ in resumed["loss_curve"]] == list(range(n + 1, 2 * n + 1))
    assert losses(resumed["loss_curve"]) == pytest.approx(losses(m1["loss_curve"])[n:], rel=1e-5)
    assert resumed["valid_loss"] == pytest.approx(m1["valid_loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--num-processes", "2"], "--coordinator, --process-id: needed too"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "[0, 2)"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"], "positive"),
    ],
)
def test_bad_process_options(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["train", "lm", "--out", str(tmp_path), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
