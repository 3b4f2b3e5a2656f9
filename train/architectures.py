"""Keras models: EfficientNet-Lite0 / EfficientNetB0 backbone -> GAP -> Dropout -> Dense(3).

Every model takes the shared preprocessing output as float32 0..255; the backbone's own input
scaling is a layer inside it. Lite0 layers are named like keras.applications' EfficientNetB0
(`block2a_expand_conv`, ...), so one weight map serves both.
"""

from __future__ import annotations

import keras
from keras import layers

from edge_infer.spec import CLASS_NAMES, INPUT_SIZE

ARCHITECTURES: tuple[str, ...] = ("efficientnet-lite0", "efficientnetb0")
BN_EPSILON = 1e-3
# (expand ratio, kernel, stride, in, out, repeats) of EfficientNet-B0 / Lite0.
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def block_names() -> list[str]:
    """Names of the 16 MBConv blocks in order: block1a, block2a, block2b, ..., block7a."""
    return [
        f"block{stage + 1}{chr(ord('a') + repeat)}"
        for stage, (*_, repeats) in enumerate(STAGES)
        for repeat in range(repeats)
    ]


def _relu6(name: str) -> layers.Layer:
    return layers.ReLU(max_value=6.0, name=name)


def _lite_block(x, name: str, expand: int, kernel: int, stride: int, filters_in: int,
                filters_out: int):
    inputs = x
    if expand != 1:
        x = layers.Conv2D(filters_in * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_expand_bn")(x)
        x = _relu6(f"{name}_expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                               name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = _relu6(f"{name}_activation")(x)
    x = layers.Conv2D(filters_out, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite0_backbone(size: int = INPUT_SIZE) -> keras.Model:
    """EfficientNet-Lite0 without its classifier: B0's stages, no SE, ReLU6, input (x-127)/128,
    on size x size images."""
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, 2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = _relu6("stem_activation")(x)
    names = iter(block_names())
    for expand, kernel, stride, filters_in, filters_out, repeats in STAGES:
        for repeat in range(repeats):
            x = _lite_block(x, next(names), expand, kernel, stride if repeat == 0 else 1,
                            filters_in if repeat == 0 else filters_out, filters_out)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="top_bn")(x)
    x = _relu6("top_activation")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def efficientnetb0_backbone(weights: str | None = None, size: int = INPUT_SIZE) -> keras.Model:
    """keras.applications EfficientNetB0 without top; weights None or 'imagenet' (downloads)."""
    return keras.applications.EfficientNetB0(
        include_top=False, weights=weights, input_shape=(size, size, 3)
    )


def classifier(
    backbone: keras.Model, dropout: float = 0.3, bn_inference: bool = True
) -> keras.Model:
    """The seed's head on a backbone: GAP -> Dropout -> Dense(3, softmax).

    bn_inference keeps the backbone's BatchNorms in inference mode (for pretrained backbones).
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    features = backbone(inputs, training=False if bn_inference else None)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(len(CLASS_NAMES), activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"busi_{backbone.name}")
