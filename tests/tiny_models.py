"""Tiny Keras classifiers with the layer patterns of EfficientNet-Lite0 and -B0, for tests of
code that walks a real model's graph."""

from __future__ import annotations

import keras
import numpy as np


def randomise_batch_norms(backbone: keras.Model, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so that folding them into the convolutions matters."""
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 3, n), rng.normal(0, 1, n),
                               rng.normal(0, 1, n), rng.uniform(0.01, 4, n)])


def tiny_classifier(seed: int = 0, lite0_stem: bool = False) -> keras.Model:
    """Outer model -> nested backbone with the Lite0 block shapes (conv+BN+ReLU6, depthwise
    +BN+ReLU6, projection conv+BN, residual Add, a conv with its own bias) -> GAP -> Dense.
    lite0_stem: a stride-2 'same' stem as Lite0's (the converter cannot fold the input
    rescaling into it, so it stays as MUL and ADD ops)."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(image)
    stem = {"strides": 2, "padding": "same"} if lite0_stem else {}
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem_conv", **stem)(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    block_input = keras.layers.ReLU(6, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(block_input)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6, name="dw_relu")(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Add(name="add")([x, block_input])
    x = keras.layers.Conv2D(4, 1, name="biased_conv")(x)
    backbone = keras.Model(image, x, name="backbone")
    randomise_batch_norms(backbone, seed)
    outer_input = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer_input))
    return keras.Model(outer_input, keras.layers.Dense(3, activation="softmax")(pooled))


def tiny_se_classifier(seed: int = 0) -> keras.Model:
    """The EfficientNetB0 shapes: conv+BN+swish, a squeeze-and-excitation block (GAP, convs
    with swish and sigmoid, multiply), outer GAP -> Dense."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(image)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("swish", name="stem_activation")(x)
    squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    squeeze = keras.layers.Conv2D(2, 1, activation="swish", name="se_reduce")(squeeze)
    squeeze = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(squeeze)
    x = keras.layers.Multiply(name="se_excite")([x, squeeze])
    backbone = keras.Model(image, x, name="backbone")
    randomise_batch_norms(backbone, seed)
    outer_input = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer_input))
    return keras.Model(outer_input, keras.layers.Dense(3, activation="softmax")(pooled))
