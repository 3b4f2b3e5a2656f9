"""`python -m benchmarks.int8_size`: can per-tensor weights in a few layers buy the int8 size
target without costing agreement?

Per-channel int8 stores a float32 scale and an int64 zero point (always 0; TFLite refuses fewer
zero points than scales) for every output channel of every weight and bias tensor: 0.5 MB of
Lite0's int8 file. Requantizing a layer's weights with one scale (its largest) and its bias
with the matching one drops those arrays. This study takes the shipped int8 model, measures on
the VALIDATION images what each layer alone costs per tensor (the change in mean |Δp| against
Keras), then picks layers greedily, least harm per byte saved first, until the file meets the
size target, and reports that model on validation and test.
Writes benchmarks/reports/int8_size-<arch>.{json,md}; a few minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from tensorflow.lite.tools import flatbuffer_utils
from tqdm import tqdm

from benchmarks.int8_study import (
    model_label,
    study_inputs,
    study_options,
    tflite_probabilities,
    write_reports,
)
from benchmarks.metrics import agreement
from convert.int8_ranges import BUILTIN, operators
from convert.tflite import float32_weight_bytes
from convert.verify import targets_for
from edge_infer.manifest import resolve_model

WEIGHTED_OPS = {BUILTIN.CONV_2D, BUILTIN.DEPTHWISE_CONV_2D, BUILTIN.FULLY_CONNECTED}


def per_channel_layers(model) -> list[dict]:
    """Each convolution / dense op whose weights are quantized per channel: operator index,
    input, weight and bias tensor indices, channel count."""
    tensors = model.subgraphs[0].tensors
    layers = []
    for index, (code, inputs, _) in enumerate(operators(model)):
        if code not in WEIGHTED_OPS:
            continue
        channels = len(tensors[inputs[1]].quantization.scale)
        if channels > 1:
            layers.append({"op": index, "input": int(inputs[0]), "weights": int(inputs[1]),
                           "bias": int(inputs[2]) if len(inputs) > 2 else -1,
                           "channels": channels})
    return layers


def _set_per_tensor(model, tensor_index: int, values: np.ndarray, scale: float,
                    dtype: type) -> None:
    tensor = model.subgraphs[0].tensors[tensor_index]
    model.buffers[tensor.buffer].data = np.frombuffer(values.astype(dtype).tobytes(), np.uint8)
    tensor.quantization.scale = np.array([scale], np.float32)
    tensor.quantization.zeroPoint = np.zeros(1, np.int64)
    tensor.quantization.quantizedDimension = 0


def _dequantized(model, tensor_index: int, dtype: type) -> np.ndarray:
    tensor = model.subgraphs[0].tensors[tensor_index]
    quantization = tensor.quantization
    values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype).reshape(tensor.shape)
    shape = [1] * values.ndim
    shape[quantization.quantizedDimension] = -1
    return values * np.asarray(quantization.scale, np.float64).reshape(shape)


def with_per_tensor_weights(model_bytes: bytes, ops: set[int]) -> bytes:
    """The int8 model with the weights of the given operators requantized per tensor (symmetric,
    scale = largest |w| / 127) and their int32 bias to the matching scale."""
    model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
    subgraph = model.subgraphs[0]
    for layer in per_channel_layers(model):
        if layer["op"] not in ops:
            continue
        weights = _dequantized(model, layer["weights"], np.int8)
        scale = float(np.abs(weights).max() / 127)
        _set_per_tensor(model, layer["weights"],
                        np.clip(np.round(weights / scale), -127, 127), scale, np.int8)
        if layer["bias"] >= 0:
            bias_scale = float(subgraph.tensors[layer["input"]].quantization.scale[0]) * scale
            bias = _dequantized(model, layer["bias"], np.int32)
            _set_per_tensor(model, layer["bias"], np.round(bias / bias_scale), bias_scale,
                            np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _harm_per_byte(layer: dict) -> float:
    return layer["val_mean_abs_dprob_change"] / layer["saved_bytes"]


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# int8 size: per-tensor weights in a few layers, {results['model']}", "",
             f"Size target: the int8 file at most {results['target_bytes']:,} bytes (float32 "
             f"weights / {results['size_target']}). Layers chosen on the validation images only "
             "(least increase of validation mean |Δp| per byte saved first); compared with Keras.",
             "", "| model | bytes | × smaller | val agreement | val mean abs Δp "
             "| test agreement | test mean abs Δp | test max abs Δp |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['bytes']:,} | {row['ratio']:.2f} | "
                     f"{row['val']['agreement']:.3f} | {row['val']['mean_abs_dprob']:.4f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['mean_abs_dprob']:.4f} | "
                     f"{row['test']['max_abs_dprob']:.3f} |")
    chosen = ", ".join(f"op {c['op']} ({c['channels']} channels)" for c in results["chosen"])
    lines += ["", f"Layers made per-tensor: {chosen}.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_size")
def main(arch: str, busi_dir: str | None, out: Path) -> None:
    source, model, data, keras_probs = study_inputs(arch, busi_dir)
    shipped = resolve_model(f"{arch}/int8").path.read_bytes()
    size_target = targets_for("int8")["min_size_ratio"]
    baseline = float32_weight_bytes(model)
    target_bytes = int(baseline / size_target)

    def measured(name: str, blob: bytes) -> dict:
        return {"name": name, "bytes": len(blob), "ratio": baseline / len(blob),
                **{split: agreement(keras_probs[split], tflite_probabilities(blob, images))
                   for split, images in data.items()}}

    def val_mean(blob: bytes) -> float:
        probs = tflite_probabilities(blob, data["val"])
        return agreement(keras_probs["val"], probs)["mean_abs_dprob"]

    start = val_mean(shipped)
    layers = per_channel_layers(flatbuffer_utils.convert_bytearray_to_object(shipped))
    for layer in tqdm(layers, desc="one layer per tensor", leave=False):
        alone = with_per_tensor_weights(shipped, {layer["op"]})
        layer["saved_bytes"] = len(shipped) - len(alone)
        layer["val_mean_abs_dprob_change"] = val_mean(alone) - start
    chosen, candidate = [], shipped
    for layer in sorted(layers, key=_harm_per_byte):
        if len(candidate) <= target_bytes:
            break
        chosen.append(layer)
        candidate = with_per_tensor_weights(shipped, {c["op"] for c in chosen})
    rows = [measured("shipped int8 (per-channel weights)", shipped),
            measured(f"{len(chosen)} layers per-tensor (chosen on validation)", candidate)]
    results = {"model": model_label(arch, source),
               "size_target": size_target, "target_bytes": target_bytes, "rows": rows,
               "chosen": chosen, "layers": layers}
    write_reports(results, out, f"int8_size-{arch}", write_markdown)


if __name__ == "__main__":
    main()
