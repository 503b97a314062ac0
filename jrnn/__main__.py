"""``python -m jrnn``: the ``jrnn`` command (see :mod:`jrnn.training.cli`)."""

from jrnn.training.cli import main

if __name__ == "__main__":
    main()
