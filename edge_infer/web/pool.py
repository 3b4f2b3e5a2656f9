"""A fixed pool of Classifiers for concurrent callers: a TFLite interpreter is not thread-safe,
so each call borrows one Classifier and no two calls ever share one."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager

from edge_infer.classifier import Classifier, Result
from edge_infer.decision import Mode
from edge_infer.manifest import ModelEntry
from edge_infer.ood import OodPolicy


class ClassifierPool:
    """`size` Classifiers of one model; `borrow` (and `predict`) block until one is free."""

    def __init__(self, model: str = "int8", threads: int = 1, size: int = 2,
                 site: str | os.PathLike | None = None) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        classifiers = [Classifier(model, site, threads) for _ in range(size)]
        self.size = size
        self.entry: ModelEntry = classifiers[0].entry
        self.has_heatmap = classifiers[0].has_heatmap
        self.calibration_info = classifiers[0].calibration.info()
        self._idle: queue.Queue[Classifier] = queue.Queue()
        for classifier in classifiers:
            self._idle.put(classifier)

    @contextmanager
    def borrow(self) -> Iterator[Classifier]:
        """A Classifier for this caller alone, returned to the pool afterwards."""
        classifier = self._idle.get()
        try:
            yield classifier
        finally:
            self._idle.put(classifier)

    def predict(self, data: bytes, mode: Mode | None = None, threshold: float | None = None,
                ood: OodPolicy = "refuse", heatmap: bool = False) -> Result:
        """Classifier.predict on a free Classifier (ImageError for an unreadable upload)."""
        with self.borrow() as classifier:
            return classifier.predict(data, mode, threshold, ood, heatmap)
