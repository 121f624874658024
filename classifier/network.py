"""The torch trainer shared by the focal-loss linear head and the MLP head.

Training happens in torch; the learned weights are kept as float32 numpy arrays, so a
saved head predicts with numpy alone (classifier.dense).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class TrainingRun:
    """Learned layers (weights (in, out), biases (out,)) and the loss per epoch."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _build(
    n_inputs: int, hidden_sizes: tuple[int, ...], n_outputs: int, dropout: float
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def train_network(*args: Any, **kwargs: Any) -> TrainingRun:
    """Run `_train` on one torch thread (see `_train` for the arguments).

    These networks are small: one thread beats two contending with the encoder on a
    shared CPU (measured 10x on 2 cores). The setting is process-wide, so it is restored.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(*args, **kwargs)
    finally:
        torch.set_num_threads(previous)


def _train(
    train: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
    loss_function: LossFunction,
    n_outputs: int,
    hidden_sizes: tuple[int, ...] = (),
    dropout: float = 0.0,
    l2: float = 0.0,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 200,
    patience: int = 10,
    seed: int = 0,
) -> TrainingRun:
    """Train with Adam on mini-batches, stopping when validation loss stops improving.

    Args:
        train: (features float32 (n, d), targets, per-row weights or None).
        validation: Same for the early-stopping rows, or None to run all epochs.
        loss_function: (logits, targets, weights) -> scalar loss.
        n_outputs: Width of the output layer.
        hidden_sizes: Widths of the hidden layers; () is a linear model.
        dropout: Dropout after each hidden layer.
        l2: Penalty l2/2 * ||W||² on weight matrices (not biases), added to the loss.
        learning_rate: Adam step size.
        batch_size: Rows per step.
        max_epochs: Upper bound on passes over the data.
        patience: Epochs without validation improvement before stopping.
        seed: Seeds initialisation, dropout and shuffling.

    Returns:
        The weights of the best epoch (lowest validation loss) and the loss curves.

    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    features, targets, weights = (None if part is None else torch.as_tensor(part) for part in train)
    network = _build(features.shape[1], hidden_sizes, n_outputs, dropout)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    matrices = [module.weight for module in network if isinstance(module, nn.Linear)]
    run = TrainingRun(weights=[], biases=[])
    best_loss, best_state, stale = float("inf"), None, 0
    for epoch in range(max_epochs):
        network.train()
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch_weights = None if weights is None else weights[rows]
            loss = loss_function(network(features[rows]), targets[rows], batch_weights)
            total += loss.item() * len(rows)
            if l2 > 0:
                loss = loss + 0.5 * l2 * sum((matrix**2).sum() for matrix in matrices)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        run.train_loss.append(total / len(features))
        if validation is None:
            best_state, run.best_epoch = network.state_dict(), epoch
            continue
        network.eval()
        with torch.no_grad():
            parts = [None if part is None else torch.as_tensor(part) for part in validation]
            validation_loss = float(loss_function(network(parts[0]), parts[1], parts[2]))
        run.validation_loss.append(validation_loss)
        if validation_loss < best_loss - 1e-6:
            best_loss, stale, run.best_epoch = validation_loss, 0, epoch
            best_state = {key: value.clone() for key, value in network.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    network.load_state_dict(best_state)
    for module in network:
        if isinstance(module, nn.Linear):
            run.weights.append(module.weight.detach().numpy().T.astype(np.float32).copy())
            run.biases.append(module.bias.detach().numpy().astype(np.float32).copy())
    return run
