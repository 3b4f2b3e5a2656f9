"""The edge classifier: a manifest-checked TFLite model, the shared preprocessing and decision
rule."""

from __future__ import annotations

import os

import numpy as np

from edge_infer.decision import Decision, Mode, decide
from edge_infer.manifest import ModelEntry, ModelError, resolve_model
from edge_infer.preprocess import ImageSource, preprocess_image
from edge_infer.tflite_model import TFLiteModel


class Classifier:
    """Classify breast-ultrasound images with one shipped TFLite model.

    `model` is a variant ('int8', 'float16', 'float32'), a manifest key
    ('efficientnet-lite0/int8') or a path to a model file listed in the manifest.
    """

    def __init__(self, model: str = "int8", threads: int = 1,
                 manifest_file: str | os.PathLike | None = None) -> None:
        self.entry: ModelEntry = resolve_model(model, manifest_file)
        if self.entry.info.get("format") != "tflite":
            raise ModelError(f"{self.entry.key} is not a TFLite model; the runtime needs one")
        try:
            self.model = TFLiteModel(self.entry.path, threads)
        except ValueError as err:
            raise ModelError(str(err)) from None
        actual = self.model.io_spec()
        for side in ("input", "output"):
            if actual[side] != self.entry.info[side]:
                raise ModelError(f"{self.entry.path}: {side} {actual[side]} does not match the "
                                 f"manifest's {self.entry.info[side]}")

    def model_info(self) -> dict[str, str]:
        """Which model answered: manifest key, variant and sha256 (part of every result)."""
        return {"key": self.entry.key, "variant": self.entry.info["variant"],
                "sha256": self.entry.info["sha256"]}

    @property
    def threshold(self) -> float:
        """The high-sensitivity threshold chosen for this model on validation data."""
        return self.entry.threshold

    def classify_array(self, image: np.ndarray, mode: Mode = "argmax",
                       threshold: float | None = None) -> Decision:
        """Decision for one preprocessed image; high-sensitivity uses the model's threshold
        unless one is given."""
        if mode == "high-sensitivity" and threshold is None:
            threshold = self.threshold
        return decide(self.model.probabilities(image), mode, threshold)

    def classify(self, source: ImageSource, mode: Mode = "argmax",
                 threshold: float | None = None) -> Decision:
        """Decode, preprocess and classify one image (path, bytes, file object or PIL image)."""
        return self.classify_array(preprocess_image(source), mode, threshold)
