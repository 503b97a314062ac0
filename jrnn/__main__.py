"""``python -m jrnn``: the ``jrnn`` command (see :mod:`jrnn.cli`)."""

from jrnn.cli import main

if __name__ == "__main__":
    main()
