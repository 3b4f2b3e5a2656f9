"""The web API's response models: the schema `/docs` shows, the same as `edge-infer --json`."""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from edge_infer.decision import Mode
from edge_infer.spec import CLASS_NAMES, UNCERTAIN_MARGIN

ClassName = Literal[CLASS_NAMES]  # type: ignore[valid-type]  # normal | benign | malignant

Probabilities = create_model(
    "Probabilities",
    __doc__="Class probabilities in the model's class order; they sum to 1.",
    **{name: (float, Field(ge=0.0, le=1.0)) for name in CLASS_NAMES},
)


class RankedClass(BaseModel):
    """One of the two most probable classes."""

    label: ClassName
    prob: float


class ModelInfo(BaseModel):
    """Which model answered."""

    key: str = Field(description="Manifest key, e.g. efficientnet-lite0/int8.")
    variant: str
    sha256: str


class Heatmap(BaseModel):
    """The class activation map of the reported class over the upload (edge_infer/cam.py):
    where the model found its evidence, not a lesion outline."""

    label: ClassName = Field(description="The class whose map is shown: the prediction.")
    width: int = Field(description="Width of the overlay: the image as decoded (EXIF orientation "
                                   "applied), shrunk so that its longest side is at most 1024.")
    height: int
    png: str = Field(description="data:image/png;base64,... the upload as decoded with the map "
                                 "overlaid (turbo colours, alpha 0.6 x map value).")


class Prediction(BaseModel):
    """One classified upload (the schema of `edge-infer --json`). For a refused image
    (refused true) `prediction` is null; the other fields describe what the model computed, for
    inspection only: not a label."""

    file: str = Field(description="The uploaded file's name.")
    prediction: Optional[ClassName] = Field(
        description="The label to report (malignant when forced); null when refused: the image "
                    "does not look like a breast ultrasound.")
    argmax_prediction: ClassName = Field(
        description="The most probable class. Given for a refused image too, for inspection "
                    "only: not a label (read prediction).")
    forced_malignant: bool = Field(
        description="High-sensitivity mode called the image malignant because prob_malignant "
                    ">= threshold, although another class was more probable; false when "
                    "refused.")
    mode: Mode
    threshold: Optional[float] = Field(
        description="The high-sensitivity threshold applied; null in argmax mode.")
    probs: Probabilities  # type: ignore[valid-type]
    prob_malignant: float
    top2: list[RankedClass] = Field(
        description="The two most probable classes. Given for a refused image too, for "
                    "inspection only: not a label.")
    margin: float = Field(description="Top probability minus the second.")
    uncertain: bool = Field(
        description=f"margin < {UNCERTAIN_MARGIN}: the model barely prefers its answer.")
    model: ModelInfo
    heatmap: Optional[Heatmap] = Field(
        None, description="Only when the request asks for it (heatmap=true); absent otherwise.")
    temperature: Optional[float] = Field(
        description="The temperature T applied to the model's outputs (p -> softmax(log p / T)) "
                    "before any decision; null: the model has none fitted (uncalibrated).")
    profile: str = Field(
        description="Where T and the threshold come from: 'shipped' (fitted on BUSI "
                    "validation images) or a site profile's file name and sha256.")
    in_distribution: Optional[bool] = Field(
        description="false: the image is unlike the training hospitals' scans (domain_warning) "
                    "or not a breast ultrasound at all (refused under ood=refuse); null: the "
                    "model has no fitted check.")
    domain_warning: bool = Field(
        description="A breast scan unlike the training hospitals' scans: labelled, but validate "
                    "the model locally (edge-infer evaluate, edge-infer calibrate).")
    ood_score: Optional[float] = Field(
        description="Feature distance to the model's training scans (about 1 for them).")
    ood_threshold: Optional[float] = Field(
        description="Above it a scan draws the domain warning (chosen on the model's "
                    "validation images for <= 2 % false alarms, or a site profile's level).")
    refuse_threshold: Optional[float] = Field(
        description="Above it the image is refused as not breast ultrasound (set by leaving a "
                    "training hospital out).")
    colour_score: Optional[float] = Field(
        description="Fraction of pixels coloured off the image's own tint (ultrasound: ~0).")
    ood_reasons: list[str] = Field(description="Why the image was flagged, in words.")
    refused: bool = Field(
        description="The label was withheld: not a breast ultrasound (and ood=refuse).")
    notes: list[str] = Field(
        description="What decoding or drawing had to do, in words (e.g. first frame of many; "
                    "no heat-map for a class the model gives almost no probability).")


class ManifestEntry(BaseModel):
    """The served model's manifest entry (figures such as `verification` passed through)."""

    model_config = ConfigDict(extra="allow")

    key: str
    format: str
    arch: str
    variant: str
    file: str
    sha256: str
    bytes: int
    threshold: float = Field(description="The validated high-sensitivity threshold.")
    preprocessing: str


class Health(BaseModel):
    """The server is up and which model it serves."""

    status: Literal["ok"]
    model: str
    workers: int = Field(description="Classifiers serving requests in parallel.")
    max_upload_bytes: int
    token_required: bool = Field(description="Whether the API needs 'Authorization: Bearer "
                                             "<token>' (`edge-infer serve --token`).")
    temperature: Optional[float] = Field(description="The temperature applied to every result.")
    profile: str = Field(description="'shipped' or the site profile in use.")


class ErrorMessage(BaseModel):
    """Why a request was refused."""

    detail: str
