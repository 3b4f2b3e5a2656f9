"""Training batches: arrays from `edge_infer.splits.load_images` (the runtime's own
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
MASK_GRID_STRIDE = 32  # the backbone's feature map is the input downsampled 32x


def geometric_augmentation(seed: int, max_zoom_out: float = 0.15) -> keras.Sequential:
    """Small geometric changes that keep ultrasound anatomy plausible: horizontal flip only (the
    skin line is at the top); out-of-image areas are black like a scan's background. Applied to
    image and lesion mask together, so both move alike."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomZoom((-0.15, max_zoom_out), fill_mode="constant", seed=seed + 3),
        ],
        name="geometric_augmentation",
    )


def intensity_augmentation(seed: int) -> keras.Sequential:
    """Gain and contrast changes of the image alone."""
    return keras.Sequential(
        [
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
        ],
        name="intensity_augmentation",
    )


def _speckle(images: tf.Tensor, seed: int) -> tf.Tensor:
    noise = tf.random.normal(tf.shape(images)[:-1], stddev=SPECKLE_SIGMA, seed=seed)[..., None]
    return tf.clip_by_value(images * (1.0 + noise), 0.0, 255.0)


def mask_grid(masks: tf.Tensor) -> tf.Tensor:
    """(B, S, S, 1) masks -> the lesion fraction of each cell of the feature map (S / 32 a
    side: 7 x 7 at 224 px), flattened like the mask head's output."""
    cells = tf.nn.avg_pool2d(masks, MASK_GRID_STRIDE, MASK_GRID_STRIDE, "VALID")
    return tf.reshape(cells, (tf.shape(cells)[0], -1))


def dataset(images: np.ndarray, targets: np.ndarray, batch_size: int, augment: bool,
            seed: int, site_levers: bool = False, masks: np.ndarray | None = None,
            sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of (float32 0..255 images, targets[, sample weights]); shuffled and augmented for
    training, with the cross-site levers of `train.site_augment` on top when `site_levers`.

    targets are class indices or rows of class probabilities (soft labels). With `masks`
    (N, S, S) the targets become {"probs": ..., "mask": lesion fractions per cell} for a model
    with a mask head, and the weights {"probs": w, "mask": 1}.
    """
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = keras.utils.to_categorical(targets, len(CLASS_NAMES))
    parts = {"image": images, "probs": targets.astype("float32")}
    if masks is not None:
        parts["mask"] = masks[..., None].astype("float32")
    if sample_weights is not None:
        parts["weight"] = sample_weights.astype("float32")
    data = tf.data.Dataset.from_tensor_slices(parts)
    if augment:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(
        lambda batch: {**batch, "image": tf.cast(batch["image"], tf.float32)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augment:
        geometric = geometric_augmentation(seed, SITE_ZOOM_OUT if site_levers else 0.15)
        intensity = intensity_augmentation(seed)
        bank = overlay_bank(seed, image_size=images.shape[1]) if site_levers else None

        def augmented(batch: dict) -> dict:
            if "mask" in batch:
                moved = geometric(tf.concat([batch["image"], batch["mask"]], -1), training=True)
                batch = {**batch, "image": moved[..., :3], "mask": moved[..., 3:]}
            else:
                batch = {**batch, "image": geometric(batch["image"], training=True)}
            image = _speckle(intensity(batch["image"], training=True), seed)
            if bank is not None:
                image = site_augment(image, bank, seed)
            return {**batch, "image": image}

        data = data.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return data.map(_model_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _model_batch(batch: dict) -> tuple:
    """The dict of one batch -> (x, y) or (x, y, sample_weight) as keras.Model.fit takes them."""
    if "mask" in batch:
        targets = {"probs": batch["probs"], "mask": mask_grid(batch["mask"])}
        if "weight" not in batch:
            return batch["image"], targets
        return batch["image"], targets, {"probs": batch["weight"],
                                         "mask": tf.ones_like(batch["weight"])}
    if "weight" not in batch:
        return batch["image"], batch["probs"]
    return batch["image"], batch["probs"], batch["weight"]
