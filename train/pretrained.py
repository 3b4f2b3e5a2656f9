"""Load the offline ImageNet EfficientNet-Lite0 tensors (PyTorch layout, `.npz`) into Keras.

See ../shared/weights/README.md: names follow lukemelas/EfficientNet-PyTorch, layouts are
PyTorch's (conv (out, in, kh, kw), depthwise (c, 1, kh, kw), dense (out, in)).
EfficientNetB0 shares every convolution and BatchNorm shape, so the same map initialises it;
its squeeze-and-excitation blocks are then set to pass-through (gate = sigmoid(12) ~ 1).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from train.architectures import block_names

SE_PASS_THROUGH_BIAS = 12.0
LITE0_WEIGHTS_FILE = Path("..") / "shared" / "weights" / "efficientnet_lite0_imagenet.npz"


class WeightsError(ValueError):
    """A weights file that is missing or does not fit the architecture."""


def _conv(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)


def _bn(tensors: dict, prefix: str) -> list[np.ndarray]:
    return [tensors[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def keras_to_torch_map(tensors: dict) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights in Keras layout, for every backbone layer in the file."""
    mapping = {
        "stem_conv": [_conv(tensors["_conv_stem.weight"])],
        "stem_bn": _bn(tensors, "_bn0"),
        "top_conv": [_conv(tensors["_conv_head.weight"])],
        "top_bn": _bn(tensors, "_bn1"),
    }
    for index, name in enumerate(block_names()):
        prefix = f"_blocks.{index}"
        if f"{prefix}._expand_conv.weight" in tensors:
            mapping[f"{name}_expand_conv"] = [_conv(tensors[f"{prefix}._expand_conv.weight"])]
            mapping[f"{name}_expand_bn"] = _bn(tensors, f"{prefix}._bn0")
        mapping[f"{name}_dwconv"] = [_depthwise(tensors[f"{prefix}._depthwise_conv.weight"])]
        mapping[f"{name}_bn"] = _bn(tensors, f"{prefix}._bn1")
        mapping[f"{name}_project_conv"] = [_conv(tensors[f"{prefix}._project_conv.weight"])]
        mapping[f"{name}_project_bn"] = _bn(tensors, f"{prefix}._bn2")
    return mapping


def read_lite0_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a Lite0 `.npz`, with a clear error when the file is missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with np.load(path) as archive:
            tensors = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read {path} as .npz: {err}") from None
    if "_conv_stem.weight" not in tensors:
        raise WeightsError(f"{path} holds no EfficientNet-Lite0 tensors (no _conv_stem.weight)")
    return tensors


def load_into_backbone(backbone: keras.Model, tensors: dict[str, np.ndarray]) -> int:
    """Copy the Lite0 tensors into a Lite0 or B0 backbone; returns how many layers were set."""
    for layer_name, weights in keras_to_torch_map(tensors).items():
        try:
            layer = backbone.get_layer(layer_name)
        except ValueError:
            raise WeightsError(f"backbone has no layer {layer_name!r}") from None
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [tuple(w.shape) for w in weights]:
            raise WeightsError(
                f"{layer_name}: file shapes {[w.shape for w in weights]} do not fit {expected}"
            )
        layer.set_weights(weights)
    return len(keras_to_torch_map(tensors))


def lite0_imagenet_classifier(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet 1000-class dense layer (kernel (1280, 1000), bias), for the provenance check."""
    return tensors["_fc.weight"].T, tensors["_fc.bias"]


def make_b0_se_pass_through(backbone: keras.Model) -> int:
    """Set every SE gate of a B0 backbone to ~1 so it passes features through unchanged."""
    count = 0
    for layer in backbone.layers:
        if layer.name.endswith("_se_expand"):
            kernel, bias = layer.get_weights()
            layer.set_weights([np.zeros_like(kernel), np.full_like(bias, SE_PASS_THROUGH_BIAS)])
            count += 1
    return count


def input_normalization(backbone: keras.Model) -> keras.layers.Normalization:
    """B0's input Normalization layer (found by type: Keras numbers its name per process)."""
    return next(layer for layer in backbone.layers
                if isinstance(layer, keras.layers.Normalization))


def match_b0_input_scaling_to_lite0(backbone: keras.Model) -> None:
    """Make B0's x/255 -> Normalization give Lite0's (x - 127) / 128, for Lite0-initialised B0."""
    norm = input_normalization(backbone)
    mean, variance = norm.get_weights()[:2]
    norm.set_weights(
        [np.full_like(mean, 127.0 / 255.0), np.full_like(variance, (128.0 / 255.0) ** 2)]
        + norm.get_weights()[2:]
    )
    # The layer computes with tensors derived from these variables at build time; without
    # this it would go on computing with the old ones until the model is saved and reloaded.
    norm.finalize_state()
