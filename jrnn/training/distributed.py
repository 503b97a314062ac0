"""Training across processes with JAX's multi-controller runtime, :mod:`jax.distributed`.

Every process runs the same program on the same data: it reads the files, builds the same
batches and calls the same jitted steps, over one mesh of all the devices of all processes
(:func:`jrnn.training.steps.data_mesh`). Each process transfers only the rows of each batch that
its own devices hold (:func:`jrnn.training.steps.shard`), params stay replicated, and XLA's
collectives (gloo between CPU processes) sum the gradients. The global batch, and so the loss
curve, is the same as in one process over as many devices. Checkpoints are written by all
processes together through orbax; metrics, logs and the progress bar come from process 0 only.

:func:`initialize` joins a run's processes; it must come before any other JAX call. A process
joins when it is given the coordinator's address, the number of processes and its own index
(``jrnn train ... --coordinator HOST:PORT --num-processes N --process-id I``, or the variables
of :data:`ENVIRONMENT`), or when a cluster launcher started it as one of several tasks
(:data:`LAUNCHERS`: ``srun`` on SLURM, ``mpirun`` of Open MPI), whose variables
``jax.distributed.initialize()`` reads by itself.

Example:
    >>> from jrnn.training import distributed
    >>> distributed.launched_tasks({"SLURM_NTASKS": "4"}), distributed.launched_tasks({})
    (4, 1)
    >>> distributed.initialize(environ={})  # no flags, no launcher: one process, nothing to join
    False
    >>> distributed.agreed(1.5)  # in one process
    1.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

# the variables that stand for --coordinator, --num-processes and --process-id
ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# the number of tasks a cluster launcher started, in the launchers jax.distributed detects
LAUNCHERS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def launched_tasks(environ: Mapping[str, str] = os.environ) -> int:
    """The number of tasks a cluster launcher started (:data:`LAUNCHERS`); 1 without one."""
    return max([1, *(int(environ[name]) for name in LAUNCHERS if environ.get(name))])


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Join the other processes of a run with ``jax.distributed.initialize``, if there are any.

    Call it before any other JAX call. Without arguments and without a launcher of several
    tasks it does nothing (one process).

    Args:
        coordinator: ``HOST:PORT`` of process 0, which the others connect to.
        num_processes: the number of processes of the run.
        process_id: this process's index, in ``[0, num_processes)``.
        environ: where to look for a cluster launcher's variables.

    Returns:
        Whether the process joined a multi-process run.

    Raises:
        ValueError: If some of the three are given but not all (outside a launcher, which
            supplies the missing ones), if they are out of range, or if the processes did not
            connect (``jax.distributed.initialize`` waits 5 minutes for all of them).
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes}
    given["--process-id"] = process_id
    launched = launched_tasks(environ) > 1
    if all(v is None for v in given.values()) and not launched:
        return False
    missing = [flag for flag, value in given.items() if value is None]
    if missing and not launched:
        raise ValueError(
            f"{', '.join(missing)}: needed too for a multi-process run (or the variables "
            f"{', '.join(ENVIRONMENT)})"
        )
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes: expected a positive integer, got {num_processes}")
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id: expected an integer in [0, {num_processes}), got {process_id}"
        )
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as e:  # no coordinator found, one missing (timeout), ...
        raise ValueError(f"jax.distributed.initialize: the processes did not connect: {e}") from e
    return True


def is_main() -> bool:
    """Whether this is process 0, the one that prints and writes metrics."""
    return jax.process_index() == 0


def agreed(value: float) -> float:
    """Process 0's ``value`` in every process (``value`` itself in a run of one process).

    A decision taken on a clock (a time budget, the schedule's progress, when to save) must
    be the same in every process, or they would run different steps.
    """
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.float32(value)))
