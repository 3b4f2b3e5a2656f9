"""The edge classifier: a manifest-checked TFLite model, the shared preprocessing and decision
rule."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from edge_infer.calibration import Calibration, apply_temperature, shipped_calibration
from edge_infer.cam import CamError, CamHead, heatmap_overlay, load_cam_head
from edge_infer.decision import Decision, Mode, decide
from edge_infer.manifest import (
    ModelEntry,
    ModelError,
    checked_sidecar,
    manifest_path,
    resolve_model,
)
from edge_infer.ood import OodCheck, OodDetector, OodPolicy, load_detector, with_ood
from edge_infer.preprocess import ImageSource, preprocess_image, to_model_input
from edge_infer.site_profile import load_profile
from edge_infer.spec import CLASS_NAMES
from edge_infer.tflite_model import ModelOutput, TFLiteModel


class Classifier:
    """Classify breast-ultrasound images with one shipped TFLite model.

    `model` is a variant ('int8', 'float16', 'float32'), a manifest key
    ('efficientnet-lite0/int8') or a path to a model file listed in the manifest. Its
    outputs go through the temperature and threshold of the manifest entry (fitted on the
    model's validation images), or of the site profile `site` (`edge-infer calibrate`) if given.
    `quiet` drops the interpreter's own log lines on stderr (`edge-infer --quiet`).
    """

    def __init__(self, model: str = "int8", threads: int = 1,
                 manifest_file: str | os.PathLike | None = None,
                 site: str | os.PathLike | None = None, quiet: bool = False) -> None:
        self.entry: ModelEntry = resolve_model(model, manifest_file, tflite_only=True)
        self.calibration: Calibration = (shipped_calibration(self.entry.info) if site is None
                                         else load_profile(site, self.entry))
        try:
            self.model = TFLiteModel(self.entry.path, threads, quiet=quiet)
        except ValueError as err:
            raise ModelError(str(err)) from None
        actual = self.model.io_spec()
        for side in ("input", "output", "feature_map"):
            if actual.get(side) != self.entry.info.get(side):
                raise ModelError(f"{self.entry.path}: {side} {actual.get(side)} does not match "
                                 f"the manifest's {self.entry.info.get(side)}")
        self.cam_head: CamHead | None = self._cam_head(
            Path(manifest_file).parent if manifest_file else manifest_path().parent)
        self.ood: OodDetector | None = load_detector(
            self.entry.info, Path(manifest_file).parent if manifest_file
            else manifest_path().parent, self.entry.key)

    def _cam_head(self, folder: Path) -> CamHead | None:
        """The head weights for heat-maps (sha256-checked), if the entry lists them."""
        facts = self.entry.info.get("cam_head")
        if facts is None or "feature_map" not in self.entry.info:
            return None
        path = checked_sidecar(folder, facts, self.entry.key)
        try:
            return load_cam_head(path, self.entry.info["feature_map"]["shape"][-1])
        except CamError as err:
            raise ModelError(str(err)) from None

    def model_info(self) -> dict[str, str]:
        """Which model answered: manifest key, variant and sha256 (part of every result)."""
        return {"key": self.entry.key, "variant": self.entry.info["variant"],
                "sha256": self.entry.info["sha256"]}

    def calibration_info(self) -> dict:
        """The temperature and profile behind the probabilities (part of every result)."""
        return self.calibration.info()

    @property
    def threshold(self) -> float:
        """The high-sensitivity threshold on calibrated probabilities: the site profile's, or
        the model's own chosen on its validation data."""
        return self.calibration.threshold

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """The model's probabilities through this classifier's temperature: what every
        decision, figure and result uses."""
        return apply_temperature(probs, self.calibration.temperature)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (3,) of one preprocessed image."""
        return self.calibrated(self.model.probabilities(image))

    def run_array(self, image: np.ndarray) -> ModelOutput:
        """The model's outputs for one preprocessed image: probabilities and feature map
        (None if the model file has none); pooled features = output.pooled_features."""
        return self.model.run(image)

    def decide_output(self, output: ModelOutput, mode: Mode = "argmax",
                      threshold: float | None = None) -> Decision:
        """Decision from the model's outputs; high-sensitivity uses the model's threshold
        unless one is given."""
        if mode == "high-sensitivity" and threshold is None:
            threshold = self.threshold
        return decide(self.calibrated(output.probs), mode, threshold)

    @property
    def has_heatmap(self) -> bool:
        """Whether this model gives heat-maps: a feature-map output and a checked head."""
        return self.cam_head is not None

    def heatmap(self, image: Image.Image, output: ModelOutput, label: str) -> Image.Image:
        """The decoded image with the class activation map of `label` overlaid, at the image's
        own size (edge_infer/cam.py)."""
        if output.feature_map is None or self.cam_head is None:
            raise CamError(f"{self.entry.key} has no feature-map output or head for heat-maps: "
                           "convert it again with busi-convert")
        return heatmap_overlay(image, output.feature_map, self.cam_head, CLASS_NAMES.index(label))

    def check_ood(self, output: ModelOutput, image: Image.Image | None = None) -> OodCheck | None:
        """Whether an image looks like the breast ultrasound the model was trained on, from its
        pooled features and (when given) its decoded RGB image (edge_infer/ood.py); None when
        the model has no fitted OOD check (busi-ood-fit)."""
        if self.ood is None or output.feature_map is None:
            return None
        return self.ood.check(output.pooled_features, image)

    def classify_array(self, image: np.ndarray, mode: Mode = "argmax",
                       threshold: float | None = None) -> Decision:
        """Decision for one preprocessed image (run_array, then decide_output)."""
        return self.decide_output(self.run_array(image), mode, threshold)

    def classify(self, source: ImageSource, mode: Mode = "argmax",
                 threshold: float | None = None) -> Decision:
        """Decode, preprocess and classify one image (path, bytes, file object or PIL image)."""
        return self.classify_array(preprocess_image(source), mode, threshold)

    def answer(self, image: Image.Image, mode: Mode = "argmax", threshold: float | None = None,
               ood_policy: OodPolicy = "refuse") -> tuple[dict, ModelOutput]:
        """One decoded RGB image's result record (decode_image(...).image), the one the CLI,
        the server and evaluate give: decision, model, calibration and the out-of-distribution
        check (prediction None when refused); plus the model's outputs, for a heat-map."""
        output = self.run_array(to_model_input(image))
        record = with_ood({**self.decide_output(output, mode, threshold).to_dict(),
                           "model": self.model_info(), **self.calibration_info()},
                          self.check_ood(output, image), ood_policy)
        return record, output
