"""Augmentations that mimic differences between scanners, operators and hospitals.

Applied on top of the basic ultrasound augmentation when training for other sites: gain and
gamma (display settings), resolution loss (older probes, smaller source images), zoom-out
(a lesion seen from farther away, as in BUS-BRA's close crops), curved-sector masks (convex
probes), and burned-in text and caliper marks (every site annotates differently; calipers
mark lesions, so random ones teach the model that they mean nothing).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from edge_infer.spec import INPUT_SIZE

OVERLAY_BANK_SIZE = 256
WORDS = ("MAMA DIREITA", "MAMA ESQUERDA", "QSE", "QSI", "QIE", "UQEXT", "RT BREAST",
         "LT BREAST", "10:00 3CM FN", "TRANS", "SAG", "RADIAL", "ANTIRAD", "GE", "L12-5",
         "D 9.7MM 5.8MM", "Dist 1.23 cm", "52 ANOS", "Gain 48", "DR 60", "FR 22", "4.0cm")


def _overlay(rng: np.random.Generator) -> np.ndarray:
    """One 224x224 mask of burned-in annotations: 0 = keep the pixel, else the mark's grey."""
    canvas = Image.new("L", (INPUT_SIZE, INPUT_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 4)):
        font = ImageFont.load_default(size=int(rng.integers(8, 15)))
        corner = rng.integers(0, 4)
        x = rng.integers(2, 60) if corner % 2 == 0 else rng.integers(120, 190)
        y = rng.integers(2, 30) if corner < 2 else rng.integers(180, 212)
        draw.text((int(x), int(y)), str(rng.choice(WORDS)), fill=int(rng.integers(150, 256)),
                  font=font)
    for _ in range(rng.integers(0, 5)):
        cx, cy = (int(v) for v in rng.integers(40, 184, size=2))
        size, grey = int(rng.integers(3, 7)), int(rng.integers(170, 256))
        if rng.random() < 0.5:
            draw.line((cx - size, cy, cx + size, cy), fill=grey)
            draw.line((cx, cy - size, cx, cy + size), fill=grey)
        else:
            draw.line((cx - size, cy - size, cx + size, cy + size), fill=grey)
            draw.line((cx - size, cy + size, cx + size, cy - size), fill=grey)
    if rng.random() < 0.5:
        x = int(rng.choice((2, INPUT_SIZE - 4)))
        for y in range(10, INPUT_SIZE - 10, int(rng.integers(15, 30))):
            draw.line((x, y, x + 2, y), fill=200)
    return np.asarray(canvas, dtype=np.float32)


def overlay_bank(seed: int, size: int = OVERLAY_BANK_SIZE,
                 image_size: int = INPUT_SIZE) -> tf.Tensor:
    """`size` random annotation masks, drawn once with Pillow at 224 px and scaled (nearest
    neighbour) to image_size: (size, image_size, image_size, 1)."""
    rng = np.random.default_rng(seed)
    bank = tf.constant(np.stack([_overlay(rng) for _ in range(size)])[..., None])
    return tf.image.resize(bank, (image_size, image_size), method="nearest")


def _per_image(batch: int, low: float, high: float, seed: int) -> tf.Tensor:
    return tf.random.uniform((batch, 1, 1, 1), low, high, seed=seed)


def _chance(batch: int, p: float, seed: int) -> tf.Tensor:
    return tf.cast(tf.random.uniform((batch, 1, 1, 1), seed=seed) < p, tf.float32)


def _gain_gamma(images: tf.Tensor, seed: int) -> tf.Tensor:
    batch = tf.shape(images)[0]
    gamma = tf.exp(_per_image(batch, np.log(0.6), np.log(1.6), seed))
    gain = _per_image(batch, 0.75, 1.3, seed + 1)
    return tf.clip_by_value(255.0 * (images / 255.0) ** gamma * gain, 0.0, 255.0)


def _resolution_loss(images: tf.Tensor, seed: int, p: float = 0.4) -> tf.Tensor:
    size = images.shape[1]
    scale = tf.random.uniform((), 0.3, 0.8, seed=seed)
    small = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    blurred = tf.image.resize(tf.image.resize(images, (small, small)), (size, size))
    use = _chance(tf.shape(images)[0], p, seed + 1)
    return use * blurred + (1.0 - use) * images


def _sector_mask(batch: tf.Tensor, size: int, seed: int, p: float = 0.3) -> tf.Tensor:
    """1 inside a convex-probe fan (apex above the image), 0 outside; all ones when unused.
    Distances are in 224-px units, so the fan covers the same part of any image size."""
    apex_y = _per_image(batch, -220.0, -40.0, seed)
    half_angle = _per_image(batch, 0.35, 0.8, seed + 1)
    coords = tf.range(size, dtype=tf.float32) * (INPUT_SIZE / size)
    ys, xs = tf.meshgrid(coords, coords, indexing="ij")
    dy = ys[None, ..., None] - apex_y
    dx = xs[None, ..., None] - INPUT_SIZE / 2
    angle = tf.abs(tf.atan2(dx, dy))
    fan = tf.cast(angle <= half_angle, tf.float32)
    use = _chance(batch, p, seed + 2)
    return use * fan + (1.0 - use)


def _annotations(images: tf.Tensor, bank: tf.Tensor, seed: int, p: float = 0.5) -> tf.Tensor:
    batch = tf.shape(images)[0]
    index = tf.random.uniform((batch,), 0, tf.shape(bank)[0], dtype=tf.int32, seed=seed)
    marks = tf.gather(bank, index) * _chance(batch, p, seed + 1)
    return tf.where(marks > 0, marks, images)


def site_augment(images: tf.Tensor, bank: tf.Tensor, seed: int) -> tf.Tensor:
    """Apply every site lever to a float32 0..255 batch (B, size, size, 3); the bank is
    `overlay_bank` of the same size."""
    grey = tf.reduce_mean(images, axis=-1, keepdims=True)
    grey = _gain_gamma(grey, seed)
    grey = _resolution_loss(grey, seed + 10)
    grey = grey * _sector_mask(tf.shape(grey)[0], grey.shape[1], seed + 20)
    grey = _annotations(grey, bank, seed + 30)
    return tf.repeat(grey, 3, axis=-1)
