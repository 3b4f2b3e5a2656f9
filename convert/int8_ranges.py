"""Refined activation ranges for full-integer int8: a calibrated TFLite model (float, with each
tensor's calibration min / max recorded, see `convert.tflite.calibrated_model`) gets better
ranges before the converter's own quantizer makes it int8.

- MSE-optimal ranges: each intermediate range is scaled (factor 0.2..1) to the least mean
  squared quantization error of that tensor's values on the calibration images; min..max is
  stretched by outliers (EfficientNet's projection outputs reach +-40 on Lite0, +-185 on B0).
- Exact input scaling: the backbone's input Rescaling (pixel * scale + offset), which TFLite
  runs as MUL then ADD, gets the ranges on which both are exact for pixels 0..255; the
  calibrated MUL range is wider than its values and rounds Lite0's input to ~171 grey levels.
"""

from __future__ import annotations

import keras
import numpy as np
from tqdm import tqdm

from convert.tf_private import BuiltinOperator, read_flatbuffer, write_flatbuffer

RANGE_SCALES = np.linspace(0.2, 1.0, 33)
SAMPLES_PER_IMAGE = 4096
BUILTIN = BuiltinOperator
STEPS = 255  # 256 levels of an 8-bit tensor


def operators(flat) -> list[tuple[int, list[int], list[int]]]:
    """(builtin operator code, input tensors, output tensors) of each op, in execution order."""
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in flat.operatorCodes]
    return [(codes[op.opcodeIndex], list(op.inputs), list(op.outputs))
            for op in flat.subgraphs[0].operators]


def recorded_ranges(model) -> dict[int, tuple[float, float]]:
    """Calibration ranges of the intermediate tensors. The model's inputs and outputs keep
    theirs (uint8 pixels, probabilities), and so does the feature map (the input of the last
    MEAN, the global average pooling): it is an output of the shipped two-output model, and
    the single-output check must quantize it the same way."""
    subgraph = model.subgraphs[0]
    pooling = [inputs[0] for code, inputs, _ in operators(model) if code == BUILTIN.MEAN]
    kept = {*subgraph.inputs, *subgraph.outputs, *pooling[-1:]}
    ranges = {}
    for index, tensor in enumerate(subgraph.tensors):
        quantization = tensor.quantization
        if index in kept:
            continue
        if quantization is not None and quantization.min is not None and len(quantization.min):
            ranges[index] = (float(quantization.min[0]), float(quantization.max[0]))
    return ranges


def activation_samples(calibrated: bytes, tensors: list[int], images: np.ndarray,
                       seed: int = 0) -> dict[int, np.ndarray]:
    """Up to SAMPLES_PER_IMAGE values of each tensor per image, from the float model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True,
                              num_threads=1)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    rng = np.random.default_rng(seed)
    samples = {index: [] for index in tensors}
    for image in tqdm(images, desc="activation ranges", leave=False):
        interpreter.set_tensor(source, image[None].astype(np.float32))
        interpreter.invoke()
        for index in tensors:
            values = interpreter.get_tensor(index).ravel()
            take = min(len(values), SAMPLES_PER_IMAGE)
            samples[index].append(rng.choice(values, take, replace=False))
    return {index: np.concatenate(parts) for index, parts in samples.items()}


def quantization_mse(values: np.ndarray, low: float, high: float) -> float:
    """Mean squared error of asymmetric 8-bit quantization of values over [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)
    step = (high - low) / STEPS
    if step == 0:
        return float(np.mean(values ** 2))
    zero = np.round(-low / step)
    restored = (np.clip(np.round(values / step) + zero, 0, STEPS) - zero) * step
    return float(np.mean((restored - values) ** 2))


def mse_range(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The recorded range scaled by the factor with the least quantization error."""
    errors = [quantization_mse(values, low * scale, high * scale) for scale in RANGE_SCALES]
    best = RANGE_SCALES[int(np.argmin(errors))]
    return low * best, high * best


def with_mse_ranges(calibrated: bytes, images: np.ndarray) -> tuple[bytes, list[dict]]:
    """The calibrated model with every activation range replaced by its MSE-optimal one;
    also the tensors whose range shrank by more than 5 %."""
    model = read_flatbuffer(calibrated)
    ranges = recorded_ranges(model)
    samples = activation_samples(calibrated, list(ranges), images)
    tensors = model.subgraphs[0].tensors
    shrunk = []
    for index, (low, high) in ranges.items():
        new_low, new_high = mse_range(samples[index], low, high)
        tensors[index].quantization.min = np.array([new_low], np.float32)
        tensors[index].quantization.max = np.array([new_high], np.float32)
        if new_high - new_low < 0.95 * (high - low):
            shrunk.append({"tensor": tensors[index].name.decode(), "recorded": [low, high],
                           "mse_optimal": [new_low, new_high]})
    return bytes(write_flatbuffer(model)), shrunk


def _input_rescaling(model: keras.Model) -> keras.layers.Rescaling:
    """The Rescaling layer applied directly to the input of the model or of a nested model."""
    models = [model, *(layer for layer in model.layers if isinstance(layer, keras.Model))]
    for owner in models:
        for layer in owner.layers:
            if isinstance(layer, keras.layers.Rescaling) and layer.input is owner.inputs[0]:
                return layer
    raise ValueError("exact input scaling needs a Rescaling layer on the model's input")


def with_exact_input_scaling(calibrated: bytes, model: keras.Model) -> bytes:
    """The calibrated model with the input Rescaling (pixel * scale + offset, which TFLite runs
    as a MUL on the graph input, then an ADD) given the ranges on which both are exact for
    pixels 0..255: the recorded ranges can be wider and then round the image to fewer grey
    levels. Unchanged when the converter folded the rescaling into the first convolution."""
    rescaling = _input_rescaling(model)
    scale, offset = float(rescaling.scale), float(rescaling.offset)
    flat = read_flatbuffer(calibrated)
    ops = operators(flat)
    tensors = flat.subgraphs[0].tensors
    source = flat.subgraphs[0].inputs[0]
    product = next((outputs[0] for code, inputs, outputs in ops
                    if code == BUILTIN.MUL and source in inputs), None)
    if product is None:
        return calibrated
    exact = {product: (0.0, 255 * scale)}
    if offset:
        total = next(outputs[0] for code, inputs, outputs in ops
                     if code == BUILTIN.ADD and product in inputs)
        exact[total] = (offset, 255 * scale + offset)
    for index, (low, high) in exact.items():
        tensors[index].quantization.min = np.array([low], np.float32)
        tensors[index].quantization.max = np.array([high], np.float32)
    return bytes(write_flatbuffer(flat))
