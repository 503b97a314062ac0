"""The benchmarked models and their matmul FLOP counts.

Notation: ``B`` batch, ``T`` steps, ``D`` input size, ``H`` hidden size, ``G`` gates (1 RNN,
4 LSTM, 3 GRU). Every model is float32 and batch-first: input `(B, T, D)`, output
`(B, T, dirs*H)`.
"""

from __future__ import annotations

from typing import NamedTuple

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


class Config(NamedTuple):
    """One benchmarked model and input shape."""

    name: str
    cell: str  # a key of GATES
    num_layers: int
    bidirectional: bool
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    remat: bool = False  # also time jrnn with rematerialisation, when jrnn offers it

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def describe(self) -> str:
        layers = f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}"
        bidirectional = ", bidirectional" if self.bidirectional else ""
        return (
            f"{self.cell.upper()}, {layers}{bidirectional}, B={self.batch}, T={self.steps:,}, "
            f"D={self.input_size}, H={self.hidden_size}"
        )

    def quick(self) -> Config:
        """The same model at tiny shapes, for smoke tests."""
        return self._replace(batch=2, steps=min(self.steps, 12), input_size=4, hidden_size=8)


MAIN = ("lstm", "lstm2bi", "gru", "rnn")  # the configurations the geometric means run over

CONFIGS = {
    c.name: c
    for c in (
        Config("lstm", "lstm", 1, False, 32, 128, 128, 256),
        Config("lstm2bi", "lstm", 2, True, 32, 128, 128, 256),
        Config("gru", "gru", 1, False, 32, 128, 128, 256),
        Config("rnn", "rnn_tanh", 1, False, 32, 128, 128, 256),
        Config("lstm-t1000", "lstm", 1, False, 16, 1_000, 64, 64),
        Config("lstm-t10000", "lstm", 1, False, 16, 10_000, 64, 64, remat=True),
    )
}


def forward_flops(config: Config) -> int:
    """Matmul FLOPs of one forward pass: ``2*T*B*G*H*(D_in + H)`` per layer and direction.

    ``D_in`` is ``D`` for the first layer and ``dirs*H`` above it. A train step (forward and
    backward) counts as three forward passes.
    """
    gates, hidden = GATES[config.cell], config.hidden_size
    total = 0
    for layer in range(config.num_layers):
        d_in = config.input_size if layer == 0 else config.num_directions * hidden
        total += (
            config.num_directions
            * 2
            * config.steps
            * config.batch
            * gates
            * hidden
            * (d_in + hidden)
        )
    return total
