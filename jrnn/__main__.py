"""``python -m jrnn``: the ``jrnn`` command (see :mod:`jrnn.cli`)."""

from jrnn.cli import app

if __name__ == "__main__":
    app()
