"""Exact class activation maps (CAM) from the edge model, in numpy: no TensorFlow, no gradients.

The model ends feature map F (h, w, C) -> GlobalAveragePooling -> Dense(W, b) -> softmax, so
for class c the map CAM_c = sum_k W[k, c] F[..., k] is exact: its mean plus b_c is the class's
logit. The map shown is:

- normalised: min-max over the h x w cells to 0..1 (a constant map gives 0 everywhere);
- upsampled: the preprocessing stretches the whole decoded image to 224 x 224 (no crop, no
  padding), so the h x w grid tiles the decoded image evenly; the map is resized straight to
  the decoded image's size with Pillow's bilinear filter (cell centres on pixel centres,
  edges clamped), the same geometry as 7x7 -> 224x224 -> original in two steps, without
  interpolating twice;
- coloured: the "turbo" colour map (Mikhailov, 2019) as a fixed 17-entry table, linearly
  interpolated to 256 levels (within 7 levels of matplotlib's turbo);
- overlaid on the image as decoded (EXIF orientation applied), shrunk first so that its longest
  side is at most MAX_SIDE: each pixel is blended with its colour by alpha = 0.6 x map value,
  so the ultrasound shows unchanged where the map is low.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge_infer.spec import CLASS_NAMES

MAX_ALPHA = 0.6
MAX_SIDE = 1024  # the overlay's longest side: its cost stays bounded for any accepted upload
RESAMPLE = Image.Resampling.BILINEAR
# matplotlib's turbo at 0, 1/16, ..., 1, rounded to 8 bits.
TURBO_ANCHORS = np.array([
    [48, 18, 59], [64, 64, 162], [70, 107, 227], [66, 148, 255], [40, 188, 235],
    [24, 221, 194], [50, 242, 152], [109, 254, 98], [164, 252, 60], [205, 236, 52],
    [238, 207, 58], [253, 172, 52], [251, 126, 33], [235, 80, 14], [208, 47, 5],
    [169, 22, 1], [122, 4, 3]], dtype=np.float64)
COLOUR_TABLE: np.ndarray = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(TURBO_ANCHORS)), channel)
     for channel in TURBO_ANCHORS.T], axis=1).round().astype(np.uint8)


class CamError(ValueError):
    """A model or head that cannot give a class activation map."""


@dataclass(frozen=True, eq=False)
class CamHead:
    """The classifier head: kernel (C, 3) and bias (3,), float32."""

    kernel: np.ndarray
    bias: np.ndarray

    def logits(self, feature_map: np.ndarray) -> np.ndarray:
        """The head's logits (3,) from a feature map (h, w, C): pooled features @ W + b."""
        return feature_map.mean(axis=(0, 1)) @ self.kernel + self.bias


def load_cam_head(path: str | os.PathLike, channels: int) -> CamHead:
    """Read a head .npz (arrays kernel, bias) written by busi convert; check its shapes."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            kernel, bias = archive["kernel"], archive["bias"]
    except (OSError, KeyError, ValueError) as err:
        raise CamError(f"{path}: not a classifier head file ({err})") from None
    classes = len(CLASS_NAMES)
    if kernel.shape != (channels, classes) or bias.shape != (classes,):
        raise CamError(f"{path}: head kernel {kernel.shape} / bias {bias.shape}, expected "
                       f"({channels}, {classes}) / ({classes},)")
    return CamHead(kernel.astype(np.float32), bias.astype(np.float32))


def class_activation_map(feature_map: np.ndarray, kernel: np.ndarray,
                         class_index: int) -> np.ndarray:
    """CAM_c = sum_k kernel[k, c] * feature_map[..., k]: (h, w) float32."""
    if feature_map.ndim != 3 or feature_map.shape[-1] != kernel.shape[0]:
        raise CamError(f"feature map {feature_map.shape} does not fit head {kernel.shape}")
    return (feature_map @ kernel[:, class_index]).astype(np.float32)


def normalise(cam: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 (all zeros for a constant map)."""
    low, span = float(cam.min()), float(cam.max() - cam.min())
    if span <= 0:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - low) / span).astype(np.float32)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to size = (width, height) of the decoded image."""
    resized = Image.fromarray(heat.astype(np.float32)).resize(size, RESAMPLE)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def colourise(heat: np.ndarray) -> np.ndarray:
    """A 0..1 map (H, W) -> turbo colours (H, W, 3) uint8."""
    return COLOUR_TABLE[np.rint(np.clip(heat, 0, 1) * 255).astype(np.uint8)]


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The image (RGB) blended with the coloured map, alpha = MAX_ALPHA x map value."""
    if heat.shape != (image.height, image.width):
        raise CamError(f"map {heat.shape} is not the image's size {image.height}x{image.width}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = (MAX_ALPHA * heat)[..., None]
    blended = base * (1 - alpha) + colourise(heat).astype(np.float32) * alpha
    return Image.fromarray(np.rint(blended).astype(np.uint8))


def heat_at_image_size(feature_map: np.ndarray, head: CamHead, class_index: int,
                       size: tuple[int, int]) -> np.ndarray:
    """The normalised CAM of one class at size = (width, height): what the overlay shows."""
    return upsample(normalise(class_activation_map(feature_map, head.kernel, class_index)), size)


def bounded(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """The image shrunk (aspect kept) so that its longest side is at most max_side."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def heatmap_overlay(image: Image.Image, feature_map: np.ndarray, head: CamHead,
                    class_index: int) -> Image.Image:
    """The decoded image (longest side at most MAX_SIDE) with the class's CAM overlaid."""
    shown = bounded(image)
    return overlay(shown, heat_at_image_size(feature_map, head, class_index, shown.size))


def png_bytes(image: Image.Image) -> bytes:
    """An image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image: Image.Image) -> str:
    """An image as a PNG data URL (what the web page shows)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
