"""Time jrnn, ``torch.nn`` and ``flax.linen`` side by side: ``python -m benchmarks.run``.

All frameworks run in this one process, on the same input, interleaved: after compiling and
warming up every model of a configuration, each repetition runs every framework's forward and
train step once, in an order that rotates from one repetition to the next, and the table shows
medians. jrnn gets the torch module's weights (``jrnn.from_torch``) and its forward output is
checked against torch's.

The process keeps glibc malloc's defaults, as a user's own ``python script.py`` runs torch or
jrnn; ``--tuned-malloc`` first restarts it with :data:`jrnn.malloc.TUNABLES`, the settings the
``jrnn`` command trains under (torch's train step gains more from them than jrnn's; see
``benchmarks/README.md``).

Example:
    python -m benchmarks.run --configs lstm gru --reps 10 --out results/cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from benchmarks import models
from benchmarks.configs import CONFIGS, Config, forward_flops
from benchmarks.models import Model
from benchmarks.report import Report, Row
from jrnn import malloc

FRAMEWORKS = ("jrnn", "torch", "flax")
TOLERANCE = {"cpu": 1e-4, "gpu": 1e-2}  # on GPUs both jax and cuDNN use TF32 matmuls by default
MATMUL_SIZE = {"cpu": 2048, "gpu": 8192}
SEED = 0
KINDS = ("forward", "train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--reps", type=int, help="timed repetitions (default 10, --quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for smoke tests")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--torch-threads", type=int, help="torch's CPU threads (default: all cores, like XLA)"
    )
    parser.add_argument(
        "--unroll",
        nargs="+",
        type=int,
        default=[],
        help="also time jrnn with these scan unrolls (rows jrnn-unrollN)",
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="restart with jrnn.malloc's GLIBC_TUNABLES, as the jrnn command does "
        "(default: glibc's defaults, as a user's own script runs every framework)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown table here (+ .json)")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 10
    if args.torch_threads is None:
        args.torch_threads = len(os.sched_getaffinity(0))
    if (
        args.reps < 1
        or args.warmup < 0
        or args.torch_threads < 1
        or min(args.unroll, default=1) < 1
    ):
        parser.error(
            f"--reps, --torch-threads and --unroll must be >= 1 and --warmup >= 0, got "
            f"{args.reps}, {args.torch_threads}, {args.unroll} and {args.warmup}"
        )
    return args


def matmul(size: int) -> Callable[[], Any]:
    """A jitted float32 `(size, size) @ (size, size)` matmul, compiled and run once."""
    a = jax.random.normal(jax.random.key(SEED), (size, size), jnp.float32)
    run, _, _ = models.compile_jax(jnp.matmul, a, a)
    run()
    return run


Task = tuple[str, str]  # (model name, "forward" / "train" / "peak")


def round_robin(
    tasks: dict[Task, Callable[[], Any]], reps: int, warmup: int
) -> dict[Task, list[float]]:
    """The time (ms) of every repetition of each task, the tasks interleaved.

    Each repetition runs every task twice in a row and times the second call, starting one task
    further along than the repetition before. The untimed call is there because a framework's
    worker threads still hold the cores after its call returns, and sleep after a while:
    torch's OpenMP workers spin for milliseconds after a parallel region, so jrnn's LSTM train
    step timed right after torch's took 38.3 ms against 33.2 ms in a row with itself (torch's
    after jrnn's: 35.9 against 34.1 ms), while 20 ms of rest before each call let torch's
    workers sleep and slowed its LSTM forward pass from 12 to 16 ms. A user's training loop calls
    one framework back to back: that is what the second call sees.
    """
    order = list(tasks)
    for _ in range(warmup):
        for task in order:
            tasks[task]()
    times: dict[Task, list[float]] = {task: [] for task in order}
    for rep in range(reps):
        shift = rep % len(order)
        for task in order[shift:] + order[:shift]:
            tasks[task]()
            start = time.perf_counter()
            tasks[task]()
            times[task].append((time.perf_counter() - start) * 1e3)
    return times


def build_models(
    config: Config, frameworks: list[str], torch_device: str, unrolls: list[int], notes: list[str]
) -> dict[str, Model]:
    """Compile and warm every framework's model of ``config``; failures become notes."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((config.batch, config.steps, config.input_size), np.float32)
    spec = models.spec_of(config)
    builders: dict[str, Callable[[], Model]] = {}
    if "torch" in frameworks or "flax" in frameworks:
        from benchmarks import peers
    if "torch" in frameworks:
        module = peers.torch_module(config, torch_device, SEED)
        _, params = jrnn.from_torch(module)
    else:
        params = spec.init(jax.random.key(SEED))
    if "jrnn" in frameworks:
        builders["jrnn"] = lambda: models.jrnn_model(spec, params, jnp.asarray(x))
        if config.remat:
            options = models.remat_option(config.steps)
            builders["jrnn-remat"] = lambda: models.jrnn_model(
                spec, params, jnp.asarray(x), options
            )
            keywords = ", ".join(f"{key}={value}" for key, value in options.items())
            notes.append(f"`{config.name}` jrnn-remat: `apply(params, x, {keywords})`")
        if models.compiled_recurrence(torch_device):
            builders["jrnn-scan"] = lambda: models.jrnn_model(
                spec, params, jnp.asarray(x), {"method": "scan"}
            )
        for unroll in unrolls:  # the scan path: the compiled recurrence has no unroll
            builders[f"jrnn-unroll{unroll}"] = lambda unroll=unroll: models.jrnn_model(
                spec, params, jnp.asarray(x), {"method": "scan", "unroll": unroll}
            )
    if "torch" in frameworks:
        builders["torch"] = lambda: peers.torch_model(module, x)
    if "flax" in frameworks:
        builders["flax"] = lambda: peers.flax_model(config, jnp.asarray(x), SEED)
    built = {}
    for name, build in builders.items():
        try:
            built[name] = build()
        except Exception as error:  # a failing peer must not cost the other measurements
            notes.append(f"`{config.name}` {name} failed: {type(error).__name__}: {error}")
    return built


def bench_config(
    config: Config,
    frameworks: list[str],
    torch_device: str,
    args: argparse.Namespace,
    peak: Callable[[], Any],
    report: Report,
) -> list[float]:
    """Measure ``config`` on every framework and append its rows to ``report``.

    Returns:
        the times (ms) of the ``peak`` matmul, run as one more task in every repetition.
    """
    print(f"{config.name}: compiling ({config.describe()})", file=sys.stderr, flush=True)
    built = build_models(config, frameworks, torch_device, args.unroll, report.notes)
    tasks = {(name, kind): getattr(m, kind) for name, m in built.items() for kind in KINDS}
    runs = round_robin({**tasks, ("matmul", "peak"): peak}, args.reps, args.warmup)
    reference = built["torch"].output if "torch" in built else None
    for name, model in built.items():
        checked = name.startswith("jrnn") and reference is not None
        row = Row(
            config=config.name,
            framework=name,
            forward_runs_ms=tuple(runs[name, "forward"]),
            train_runs_ms=tuple(runs[name, "train"]),
            forward_gflop=forward_flops(config) / 1e9,
            compile_s=model.compile_s,
            memory_bytes=model.memory_bytes,
            max_diff=float(np.max(np.abs(model.output - reference))) if checked else None,
        )
        report.rows.append(row)
        print(
            f"  {name}: forward {row.forward_ms:.2f} ms, train {row.train_ms:.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    return runs["matmul", "peak"]


def select_devices(device: str, frameworks: list[str], notes: list[str]) -> tuple[Any, str, list]:
    """The jax device, the torch device and the frameworks that can run on ``device``."""
    if device == "cpu":
        return jax.devices("cpu")[0], "cpu", frameworks
    try:
        jax_device = jax.devices("gpu")[0]
    except RuntimeError as error:
        raise SystemExit(
            f"benchmarks.run: error: --device gpu, but jax has no GPU ({error})"
        ) from None
    if "torch" in frameworks:
        import torch

        if not torch.cuda.is_available():
            notes.append("torch sees no CUDA device: torch not run")
            frameworks = [f for f in frameworks if f != "torch"]
    return jax_device, "cuda", frameworks


def describe_machine(device: str, jax_device: Any, frameworks: list[str]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores available",
        "device": device if device == "cpu" else jax_device.device_kind,
        "python": platform.python_version(),
        "jax": f"{jax.__version__} (jaxlib {metadata.version('jaxlib')}, {jax_device.platform})",
        "jrnn": jrnn.__version__,
    }
    if "torch" in frameworks or "flax" in frameworks:
        import flax
        import torch

        threads = torch.get_num_threads()
        wait = os.environ.get("OMP_WAIT_POLICY", "unset")
        meta["torch"] = f"{torch.__version__}, {threads} threads, OMP_WAIT_POLICY {wait}" + (
            f", {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}"
            if device == "gpu"
            else ""
        )
        meta["flax"] = flax.__version__
    return meta


def main(argv: list[str] | None = None) -> Report:
    """Run the benchmark; print the table and write it to ``--out`` when given."""
    args = parse_args(argv)
    if "torch" in args.frameworks or "flax" in args.frameworks:
        try:
            from benchmarks import peers  # noqa: F401  (torch and flax)
        except ModuleNotFoundError as error:
            raise SystemExit(
                f"benchmarks.run: error: {error.name} is not installed: pip install 'jrnn[bench]'"
            ) from None
    notes: list[str] = []
    jax_device, torch_device, frameworks = select_devices(args.device, args.frameworks, notes)
    if torch_device == "cpu" and "torch" in frameworks:
        import torch

        torch.set_num_threads(args.torch_threads)
    configs = [CONFIGS[name].quick() if args.quick else CONFIGS[name] for name in args.configs]
    with jax.default_device(jax_device):
        size = 256 if args.quick else MATMUL_SIZE[args.device]
        peak, peak_ms = matmul(size), []
        meta = describe_machine(args.device, jax_device, frameworks)
        meta["matmul_peak"] = f"jitted float32 {size}^3 matmul, one in every repetition, median"
        meta["timing"] = (
            f"median of {args.reps} interleaved repetitions after {args.warmup} warm-up runs; "
            "train step = forward + backward of mean(output**2) w.r.t. params and input"
        )
        meta["load_average_1min"] = f"{os.getloadavg()[0]:.1f} at the start"
        meta["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "(not set)")
        report = Report(meta, TOLERANCE[args.device], {c.name: c.describe() for c in configs})
        report.notes.extend(notes)
        for config in configs:
            peak_ms += bench_config(config, frameworks, torch_device, args, peak, report)
            meta["matmul_peak_gflops"] = round(2 * size**3 / statistics.median(peak_ms) / 1e6, 1)
            meta["load_average_1min"] += f", {os.getloadavg()[0]:.1f} after {config.name}"
            if args.out:
                report.write(args.out)
    print(report.markdown())
    return report


if __name__ == "__main__":
    if parse_args(None).tuned_malloc:
        malloc.reexec()  # the jrnn command's glibc malloc settings (see jrnn.malloc)
    main()
