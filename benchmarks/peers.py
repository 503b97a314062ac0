"""The peers jrnn is measured against: ``torch.nn`` (cuDNN on a GPU) and ``flax.linen.RNN``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch

from benchmarks.configs import Config
from benchmarks.models import Model, jax_model

TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}
FLAX_CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.SimpleCell}


def torch_module(config: Config, device: str, seed: int) -> torch.nn.RNNBase:
    """A freshly initialised, batch-first ``torch.nn.LSTM/GRU/RNN`` for ``config``."""
    torch.manual_seed(seed)
    module = TORCH_MODULES[config.cell](
        config.input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        batch_first=True,
        bidirectional=config.bidirectional,
    )
    return module.to(device)


def torch_model(module: torch.nn.RNNBase, x: np.ndarray) -> Model:
    """``module`` as a Model: forward under ``no_grad``, train step with ``autograd.grad``."""
    device = next(module.parameters()).device
    cuda = device.type == "cuda"
    inputs = torch.from_numpy(x).to(device)
    leaves = [*module.parameters(), inputs.clone().requires_grad_(True)]

    def forward() -> torch.Tensor:
        with torch.no_grad():
            output = module(inputs)[0]
        if cuda:
            torch.cuda.synchronize()
        return output

    def train() -> tuple[torch.Tensor, ...]:
        loss = (module(leaves[-1])[0] ** 2).mean()
        grads = torch.autograd.grad(loss, leaves)
        if cuda:
            torch.cuda.synchronize()
        return grads

    def peak_bytes(run: Callable[[], Any]) -> int:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        return torch.cuda.max_memory_allocated(device) - base

    output = forward().cpu().numpy()
    memory = (peak_bytes(forward), peak_bytes(train)) if cuda else None
    return Model(forward, train, output, None, memory)


class FlaxStack(nn.Module):
    """``flax.linen.RNN`` layers stacked by hand, each optionally ``Bidirectional``."""

    cell: type[nn.RNNCellBase]
    hidden_size: int
    num_layers: int
    bidirectional: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.num_layers):
            forward = nn.RNN(self.cell(self.hidden_size))
            if self.bidirectional:
                x = nn.Bidirectional(forward, nn.RNN(self.cell(self.hidden_size)))(x)
            else:
                x = forward(x)
        return x


def flax_model(config: Config, x: jax.Array, seed: int) -> Model:
    """``flax.linen`` model of ``config`` (its own initialisation) as a Model."""
    module = FlaxStack(
        FLAX_CELLS[config.cell], config.hidden_size, config.num_layers, config.bidirectional
    )
    params = module.init(jax.random.key(seed), x)
    return jax_model(module.apply, params, x)
