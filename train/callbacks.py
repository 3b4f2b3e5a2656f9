"""Model selection during fine-tuning: keep the best epoch's weights by a chosen score."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


class BestWeights(keras.callbacks.Callback):
    """Track a score at each epoch's end (higher is better), stop after `patience` epochs
    without a better one, and always end with the best epoch's weights.

    Placed after `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)` it scores and keeps the
    averaged weights.
    """

    def __init__(self, score: Callable[[dict], float], patience: int) -> None:
        super().__init__()
        self.score, self.patience = score, patience
        self.best, self.best_epoch, self.best_weights, self.waited = -np.inf, -1, None, 0
        self.scores: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float(self.score(logs or {}))
        self.scores.append(value)
        if value > self.best:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            self.best_weights = self.model.get_weights()
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def lower_loss(name: str = "val_loss") -> Callable[[dict], float]:
    """Score = minus a logged validation loss."""
    return lambda logs: -logs[name]
