"""Training batches: arrays from `edge_infer.datasets.load_images` (the runtime's own
preprocessing, so un-augmented training inputs are exactly what the edge runtime feeds its
models), then augmentation on those arrays."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from edge_infer.spec import CLASS_NAMES
from train.site_augment import overlay_bank, site_augment

SPECKLE_SIGMA = 0.08
SITE_ZOOM_OUT = 0.45


def ultrasound_augmentation(seed: int, max_zoom_out: float = 0.15) -> keras.Sequential:
    """Small geometric and intensity changes that keep ultrasound anatomy plausible.

    Horizontal flip only (the skin line is at the top); out-of-image areas are black like
    the background of a scan; speckle is multiplicative Gaussian noise.
    """
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomZoom((-0.15, max_zoom_out), fill_mode="constant", seed=seed + 3),
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
        ],
        name="augmentation",
    )


def _speckle(images: tf.Tensor, seed: int) -> tf.Tensor:
    noise = tf.random.normal(tf.shape(images)[:-1], stddev=SPECKLE_SIGMA, seed=seed)[..., None]
    return tf.clip_by_value(images * (1.0 + noise), 0.0, 255.0)


def dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, augment: bool,
            seed: int, site_levers: bool = False) -> tf.data.Dataset:
    """Batches of (float32 0..255 images, one-hot labels); shuffled and augmented for training,
    with the cross-site levers of `train.site_augment` on top when `site_levers`."""
    one_hot = keras.utils.to_categorical(labels, len(CLASS_NAMES)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, one_hot))
    if augment:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if augment:
        augmentation = ultrasound_augmentation(seed, SITE_ZOOM_OUT if site_levers else 0.15)
        data = data.map(
            lambda x, y: (_speckle(augmentation(x, training=True), seed), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if site_levers:
            bank = overlay_bank(seed)
            data = data.map(lambda x, y: (site_augment(x, bank, seed), y),
                            num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
