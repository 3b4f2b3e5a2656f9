"""`python -m benchmarks.int8_ranges`: does better activation-range calibration buy int8
agreement?

The TFLite converter quantizes each activation tensor over the min..max it saw on the
representative images; a few outliers can stretch that range (EfficientNet's projection
outputs reach +-40 on Lite0, +-185 on B0) and coarsen every other value's step. This study
calibrates as `busi-convert` does, then replaces each range by the one that minimises the mean
squared quantization error of that tensor's values on the same validation images (the range
scaled by a factor in 0.2..1, similar to TensorRT's MSE calibration), quantizes with the
converter's own quantizer, and compares the models with Keras on validation and test. It also
gives the input rescaling (pixel / 128 - 127 / 128 on Lite0, which TFLite runs as MUL then ADD)
the ranges on which it is exact: calibrated, the MUL's range is wider than its values and
rounds the image to about 171 grey levels before the first convolution.
Writes benchmarks/reports/int8_ranges-<arch>.{json,md}; a few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import click
import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.tools import flatbuffer_utils

from benchmarks.int8_study import REPORTS, _int8_converter, tflite_probabilities
from benchmarks.metrics import agreement
from edge_infer.datasets import load_images, resolve_busi_dir, split_files
from edge_infer.manifest import resolve_model

RANGE_SCALES = np.linspace(0.2, 1.0, 33)
SAMPLES_PER_IMAGE = 4096
STEPS = 255  # 256 levels of an 8-bit tensor


def calibrated_model(model: keras.Model, calibration: np.ndarray) -> bytes:
    """The float TFLite model with each tensor's calibration min / max recorded in it
    (the converter's first half, as its quantization debugger uses it)."""
    converter = _int8_converter(model, calibration)
    converter._experimental_calibrate_only = True
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def quantized(calibrated: bytes) -> bytes:
    """Full-integer int8 (uint8 input and output) from a calibrated model's recorded ranges."""
    return tflite_convert.mlir_quantize(calibrated, fully_quantize=True,
                                        input_data_type=tf.uint8, output_data_type=tf.uint8)


def _recorded_ranges(model) -> dict[int, tuple[float, float]]:
    """Calibration ranges of the intermediate tensors (the model's inputs and outputs keep
    theirs: uint8 pixels, probabilities and the feature map the runtime reads)."""
    subgraph = model.subgraphs[0]
    ends = {*subgraph.inputs, *subgraph.outputs}
    ranges = {}
    for index, tensor in enumerate(subgraph.tensors):
        quantization = tensor.quantization
        if index in ends:
            continue
        if quantization is not None and quantization.min is not None and len(quantization.min):
            ranges[index] = (float(quantization.min[0]), float(quantization.max[0]))
    return ranges


def activation_samples(calibrated: bytes, tensors: list[int], images: np.ndarray,
                       seed: int = 0) -> dict[int, np.ndarray]:
    """Up to SAMPLES_PER_IMAGE values of each tensor per image, from the float model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    rng = np.random.default_rng(seed)
    samples = {index: [] for index in tensors}
    for image in images:
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
    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    ranges = _recorded_ranges(model)
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
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), shrunk


def with_exact_input_scaling(calibrated: bytes, model: keras.Model) -> bytes:
    """The calibrated model with the backbone's input Rescaling (pixel * scale + offset, which
    TFLite runs as MUL then ADD) given the ranges on which both are exact for pixels 0..255:
    the recorded ranges can be wider and then round the image to fewer grey levels."""
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    rescaling = next(layer for layer in backbone.layers
                     if isinstance(layer, keras.layers.Rescaling))
    scale, offset = float(rescaling.scale), float(rescaling.offset)
    exact = {"mul": (0.0, 255 * scale), "add": (offset, 255 * scale + offset)}
    flat = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    tensors = flat.subgraphs[0].tensors
    for index in _recorded_ranges(flat):
        name = tensors[index].name.decode()
        op = name.rsplit("/", 1)[-1]
        if f"/{rescaling.name}" in name and op in exact:
            tensors[index].quantization.min = np.array([exact[op][0]], np.float32)
            tensors[index].quantization.max = np.array([exact[op][1]], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# int8 activation ranges: {results['model']}", "",
             "Full-integer int8 models from the same calibration on the BUSI validation images, "
             "compared with Keras; ranges fitted on validation images only.", "",
             "| ranges | val agreement | test agreement | test max abs Δp | test mean abs Δp |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['val']['agreement']:.3f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['max_abs_dprob']:.3f} | "
                     f"{row['test']['mean_abs_dprob']:.4f} |")
    lines += ["", f"{len(results['shrunk'])} of {results['tensors']} activation ranges shrank "
              "by more than 5 %.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@click.option("--arch", default="efficientnet-lite0", show_default=True)
@click.option("--busi-dir", type=click.Path(file_okay=False), help="BUSI folder (or $BUSI_DIR).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REPORTS,
              show_default=True, help="Folder for int8_ranges-<arch>.json and .md.")
def main(arch: str, busi_dir: str | None, out: Path) -> None:
    source = resolve_model(f"{arch}/keras")
    root = resolve_busi_dir(busi_dir)
    data = {split: load_images(split_files(split), root, desc=split)[0]
            for split in ("val", "test")}
    model = keras.models.load_model(source.path)
    keras_probs = {split: model.predict(images.astype(np.float32), verbose=0)
                   for split, images in data.items()}
    calibrated = calibrated_model(model, data["val"])
    tuned, shrunk = with_mse_ranges(calibrated, data["val"])
    tensor_count = len(_recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(tuned)))
    rows = []
    variants = {"min / max (converter default, shipped)": calibrated,
                "min / max, exact input scaling": with_exact_input_scaling(calibrated, model),
                "MSE-optimal": tuned,
                "MSE-optimal, exact input scaling": with_exact_input_scaling(tuned, model)}
    for name, ranges in variants.items():
        blob = quantized(ranges)
        rows.append({"name": name, "bytes": len(blob),
                     **{split: agreement(keras_probs[split], tflite_probabilities(blob, images))
                        for split, images in data.items()}})
        click.echo(f"{name}: test agreement {rows[-1]['test']['agreement']:.3f}", err=True)
    results = {"model": f"{arch} ({source.info['file']}, sha256 {source.info['sha256'][:12]})",
               "rows": rows, "tensors": tensor_count, "shrunk": shrunk}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"int8_ranges-{arch}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / f"int8_ranges-{arch}.md")
    click.echo(f"wrote {out / f'int8_ranges-{arch}.md'}")


if __name__ == "__main__":
    main()
