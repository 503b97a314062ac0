"""The training application: the ``jrnn`` command and the library under it (the ``train`` extra).

The core (:mod:`jrnn`) needs only JAX and NumPy; this package adds optax, orbax, typer and rich.
From the bottom up:

- :mod:`~jrnn.training.batches`: the one batch type, a task's data ready for training.
- :mod:`~jrnn.training.model`: the base of the task models and the registry of cells.
- :mod:`~jrnn.training.distributed`: joining the processes of a multi-process run
  (``jax.distributed``).
- :mod:`~jrnn.training.steps`: optimisers, the jit-compiled train and eval steps, sharding.
- :mod:`~jrnn.training.loop`: :func:`~jrnn.training.loop.fit`, epochs, time budget, schedule.
- :mod:`~jrnn.training.checkpoint`: orbax checkpoints of the training state.
- :mod:`~jrnn.training.generate`: sampling from a language model.
- :mod:`~jrnn.training.options`: the hyper-parameters of a run.
- :mod:`~jrnn.training.tasks`: one module per task (``lm``, ``classify``, ``tag``), each owning
  its defaults, options, reading, vocabularies, batches, model and metrics.
- :mod:`~jrnn.training.runs`: whole runs from files, for any task.
- :mod:`~jrnn.training.cli`: the ``jrnn`` command.
"""
