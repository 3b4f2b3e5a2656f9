"""The classifier with its last convolutional feature map as a second output, and its head.

The shipped Keras models end backbone -> GlobalAveragePooling -> Dropout -> Dense(softmax), so
the feature map F (the GAP layer's input) and the Dense kernel W give the exact class
activation map CAM_c = sum_k W[k, c] F_k. Conversion exports F beside the probabilities; the
runtime, which has no TensorFlow, gets W and the bias from a small sidecar (`write_head`).
"""

from __future__ import annotations

import io
import os
import zipfile

import keras
import numpy as np

from edge_infer.spec import CLASS_NAMES

# A fixed timestamp inside the .npz: the same head always gives the same bytes (and sha256).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _only(model: keras.Model, kind: type, what: str) -> keras.layers.Layer:
    found = [layer for layer in model.layers if isinstance(layer, kind)]
    if len(found) != 1:
        raise ValueError(f"{model.name}: expected one {what} layer at the top level, "
                         f"found {len(found)}")
    return found[0]


def pooling_layer(model: keras.Model) -> keras.layers.GlobalAveragePooling2D:
    """The model's GlobalAveragePooling2D: its input is the last convolutional feature map."""
    return _only(model, keras.layers.GlobalAveragePooling2D, "GlobalAveragePooling2D")


def head_layer(model: keras.Model) -> keras.layers.Dense:
    """The Dense softmax layer that produces the model's output from the pooled features."""
    dense = _only(model, keras.layers.Dense, "Dense")
    if dense.output is not model.output:
        raise ValueError(f"{model.name}: the Dense layer {dense.name} is not the model's output")
    if dense.activation is not keras.activations.softmax:
        raise ValueError(f"{model.name}: the head {dense.name} is not a softmax layer")
    return dense


def with_feature_map(model: keras.Model) -> keras.Model:
    """The same layers with two outputs: probabilities (N, 3) and feature map (N, h, w, C)."""
    features = pooling_layer(model).input
    kernel, _ = head_weights(model)
    if features.shape[-1] != kernel.shape[0]:
        raise ValueError(f"{model.name}: feature map has {features.shape[-1]} channels, the "
                         f"head takes {kernel.shape[0]}")
    return keras.Model(model.inputs, [model.output, features], name=f"{model.name}_with_features")


def head_weights(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """The Dense head's kernel (C, 3) and bias (3,) as float32."""
    kernel, bias = (np.asarray(w, dtype=np.float32) for w in head_layer(model).get_weights())
    if kernel.shape[1:] != (len(CLASS_NAMES),) or bias.shape != (len(CLASS_NAMES),):
        raise ValueError(f"{model.name}: head kernel {kernel.shape} / bias {bias.shape} do not "
                         f"give {len(CLASS_NAMES)} classes")
    return kernel, bias


def write_head(model: keras.Model, path: str | os.PathLike) -> None:
    """Save the head as an .npz (arrays `kernel`, `bias`) with reproducible bytes."""
    kernel, bias = head_weights(model)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("kernel", kernel), ("bias", bias)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE),
                             buffer.getvalue())
