"""A fixed pool of Classifiers for concurrent callers: a TFLite interpreter is not thread-safe,
so each call borrows one Classifier and no two calls ever share one."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from edge_infer.classifier import Classifier
from edge_infer.decision import Mode
from edge_infer.manifest import ModelEntry
from edge_infer.ood import OodPolicy
from edge_infer.preprocess import ImageSource, decode_image


class ClassifierPool:
    """`size` Classifiers of one model; `borrow` (and `classify_checked`) block until one is
    free."""

    def __init__(self, model: str = "int8", threads: int = 1, size: int = 2,
                 site: str | os.PathLike | None = None) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        classifiers = [Classifier(model, threads=threads, site=site) for _ in range(size)]
        self.size = size
        self.entry: ModelEntry = classifiers[0].entry
        self.has_heatmap = classifiers[0].has_heatmap
        self.calibration_info = classifiers[0].calibration_info()
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

    def classify_checked(self, source: ImageSource, mode: Mode = "argmax",
                         threshold: float | None = None, heatmap: bool = False,
                         ood_policy: OodPolicy = "refuse") -> tuple[dict, Image.Image | None]:
        """Decode (no interpreter needed), then on a free Classifier: the image's result record
        (Classifier.answer: decision and the check that it looks like a breast ultrasound) and,
        if asked and the label is not withheld, the decoded image with the predicted class's
        heat-map overlaid."""
        decoded = decode_image(source)
        with self.borrow() as classifier:
            record, output = classifier.answer(decoded.image, mode, threshold, ood_policy)
            overlay = (classifier.heatmap(decoded.image, output, record["prediction"])
                       if heatmap and not record["refused"] else None)
            return record, overlay
