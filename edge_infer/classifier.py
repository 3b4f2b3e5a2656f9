"""The one public API: `Classifier(model, site, threads).predict(image) -> Result`.

Every answer goes through the same steps: decode, the one preprocessing, the TFLite model, the
temperature (shipped or the site profile's), the decision rule and the input check. The CLI, the
web app and `edge-infer evaluate` all call `predict`, so they give the same record.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from edge_infer.calibration import Calibration, apply_temperature, shipped_calibration
from edge_infer.cam import CamError, CamHead, heatmap_overlay, load_cam_head
from edge_infer.decision import Mode, decide, requested_mode
from edge_infer.manifest import (
    ModelEntry,
    ModelError,
    checked_sidecar,
    manifest_path,
    resolve_model,
)
from edge_infer.ood import OodDetector, OodPolicy, load_detector, with_ood
from edge_infer.preprocess import ImageError, ImageSource, decode_image, to_model_input
from edge_infer.site_profile import load_profile
from edge_infer.spec import CLASS_NAMES
from edge_infer.tflite_model import ModelOutput, TFLiteModel

ImageInput = Union[ImageSource, np.ndarray]
HEATMAP_MIN_PROBABILITY = 0.01


@dataclass(frozen=True)
class Result:
    """One image's answer; `to_dict()` is the JSON record of `edge-infer --json` and the web API.
    `prediction` is None when the input check refused the image (`refused`)."""

    prediction: str | None
    argmax_prediction: str
    forced_malignant: bool
    mode: str
    threshold: float | None
    probs: dict[str, float]
    prob_malignant: float
    top2: list[dict]
    margin: float
    uncertain: bool
    model: dict[str, str]
    temperature: float | None
    profile: str
    in_distribution: bool | None
    domain_warning: bool
    ood_score: float | None
    ood_threshold: float | None
    refuse_threshold: float | None
    colour_score: float | None
    ood_reasons: list[str]
    refused: bool
    notes: list[str] = field(default_factory=list)
    heatmap: Image.Image | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The JSON-ready record (the heat-map image is not part of it)."""
        record = asdict(self)
        del record["heatmap"]
        return record


def _as_image(image: ImageInput) -> ImageSource:
    """A numpy array (H, W) or (H, W, 3) of uint8 becomes a PIL image; anything else passes."""
    if not isinstance(image, np.ndarray):
        return image
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ImageError(f"expected a uint8 array (H, W) or (H, W, 3), got {image.dtype} "
                         f"{image.shape}")
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)


class Classifier:
    """Classify breast-ultrasound images with one shipped TFLite model.

    `model`: a variant ('int8', 'float16', 'float32'), a manifest key ('efficientnet-lite0/int8')
    or a model file the manifest lists. `site`: a site profile (`edge-infer calibrate`) whose
    temperature, threshold, mode and input-check warning level replace the shipped ones.
    `quiet` drops the interpreter's log lines.
    """

    def __init__(self, model: str = "int8", site: str | os.PathLike | None = None,
                 threads: int = 1, *, manifest_file: str | os.PathLike | None = None,
                 quiet: bool = False) -> None:
        self.entry: ModelEntry = resolve_model(model, manifest_file, tflite_only=True)
        self.calibration: Calibration = (shipped_calibration(self.entry.info) if site is None
                                         else load_profile(site, self.entry))
        try:
            self._model = TFLiteModel(self.entry.path, threads, quiet=quiet)
        except ValueError as err:
            raise ModelError(str(err)) from None
        actual = self._model.io_spec()
        for side in ("input", "output", "feature_map"):
            if actual.get(side) != self.entry.info.get(side):
                raise ModelError(f"{self.entry.path}: {side} {actual.get(side)} does not match "
                                 f"the manifest's {self.entry.info.get(side)}")
        folder = Path(manifest_file).parent if manifest_file else manifest_path().parent
        self.cam_head: CamHead | None = self._load_cam_head(folder)
        detector = load_detector(self.entry.info, folder, self.entry.key)
        if detector is not None and self.calibration.ood_threshold is not None:
            detector = detector.with_threshold(self.calibration.ood_threshold)
        self.input_check: OodDetector | None = detector

    def _load_cam_head(self, folder: Path) -> CamHead | None:
        """The head weights for heat-maps (sha256-checked), if the entry lists them."""
        facts = self.entry.info.get("cam_head")
        if facts is None or "feature_map" not in self.entry.info:
            return None
        path = checked_sidecar(folder, facts, self.entry.key)
        try:
            return load_cam_head(path, self.entry.info["feature_map"]["shape"][-1])
        except CamError as err:
            raise ModelError(str(err)) from None

    @property
    def model_info(self) -> dict[str, str]:
        """Which model answers: manifest key, variant and sha256 (part of every result)."""
        return {"key": self.entry.key, "variant": self.entry.info["variant"],
                "sha256": self.entry.info["sha256"]}

    @property
    def threshold(self) -> float:
        """The high-sensitivity threshold on calibrated probabilities (the site profile's, or
        the model's own, chosen on its validation data)."""
        return self.calibration.threshold

    @property
    def has_heatmap(self) -> bool:
        """Whether this model gives heat-maps: a feature-map output and a checked head."""
        return self.cam_head is not None

    def predict(self, image: ImageInput, mode: Mode | None = None,
                threshold: float | None = None, ood: OodPolicy = "refuse",
                heatmap: bool | str = False) -> Result:
        """Classify one image: a path, bytes, file object, PIL image or uint8 array.

        `mode`/`threshold`: argmax or high-sensitivity (a threshold implies it; the default
        threshold is this classifier's); no mode: the site profile's, else argmax. `ood`:
        refuse (withhold the label of an image that is not a breast ultrasound) or warn (label
        it anyway); a breast scan unlike the training hospitals' is labelled either way, with
        `domain_warning`. `heatmap`: True for the predicted class's map, or a class name.
        ImageError for an input that cannot be read."""
        decoded = decode_image(_as_image(image))
        mode, threshold = self.decision_rule(mode, threshold)
        output = self._model.run(to_model_input(decoded.image))
        probs = apply_temperature(output.probs, self.calibration.temperature)
        record = with_ood({**decide(probs, mode, threshold).to_dict(),
                           "model": self.model_info, **self.calibration.info()},
                          self._check(output, decoded.image), ood)
        notes = list(decoded.notes)
        overlay = None
        if heatmap and not record["refused"]:
            label = record["prediction"] if heatmap is True else heatmap
            overlay, note = self._heatmap(decoded.image, output, label,
                                          record["probs"][label])
            notes += [note] if note else []
        return Result(**record, notes=notes, heatmap=overlay)

    def decision_rule(self, mode: Mode | None = None,
                      threshold: float | None = None) -> tuple[Mode, float | None]:
        """The mode and threshold `predict` applies for these options: a threshold implies
        high-sensitivity; no mode means the site profile's (argmax without one); the default
        threshold is this classifier's. ValueError for a threshold with argmax."""
        mode = requested_mode(mode or (None if threshold is not None
                                       else self.calibration.mode), threshold)
        if mode == "high-sensitivity" and threshold is None:
            threshold = self.threshold
        return mode, threshold

    def predict_proba(self, image: ImageInput, calibrated: bool = True) -> np.ndarray:
        """Class probabilities (3,) in CLASS_NAMES order, through the temperature unless
        `calibrated` is False (what a site profile is fitted on); no input check applied."""
        probs = self.raw_output(image)[0]
        return apply_temperature(probs, self.calibration.temperature) if calibrated else probs

    def raw_output(self, image: ImageInput) -> tuple[np.ndarray, float | None]:
        """What a site profile is fitted on: the uncalibrated probabilities (3,) and the input
        check's feature distance (None: no fitted check)."""
        output = self._model.run(to_model_input(decode_image(_as_image(image)).image))
        distance = (None if self.input_check is None or output.feature_map is None
                    else float(self.input_check.density.score(output.pooled_features)))
        return output.probs, distance

    def _check(self, output: ModelOutput, image: Image.Image):
        """The input check's verdict, or None when the model has none fitted."""
        if self.input_check is None or output.feature_map is None:
            return None
        return self.input_check.check(output.pooled_features, image)

    def _heatmap(self, image: Image.Image, output: ModelOutput, label: str,
                 probability: float) -> tuple[Image.Image | None, str | None]:
        """The class's heat-map overlay, or None and why: no head, or a class the model gives
        almost no probability (its min-max normalised map would be noise made to look sure)."""
        if label not in CLASS_NAMES:
            raise ValueError(f"heat-map class must be one of {CLASS_NAMES}, got {label!r}")
        if output.feature_map is None or self.cam_head is None:
            raise CamError(f"{self.entry.key} has no feature-map output or head for heat-maps: "
                           "convert it again")
        if probability < HEATMAP_MIN_PROBABILITY:
            return None, (f"no heat-map drawn: the model gives {label} a probability of "
                          f"{probability:.3f} (< {HEATMAP_MIN_PROBABILITY}), so its map would "
                          "show noise")
        return heatmap_overlay(image, output.feature_map, self.cam_head,
                               CLASS_NAMES.index(label)), None
