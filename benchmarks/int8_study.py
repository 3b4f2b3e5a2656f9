"""`python -m benchmarks.int8_study`: what each int8 fix buys on a shipped Keras model.

Every row is a full-integer (or partly float) TFLite model of the same Keras model, compared
with it on BUSI validation and test images: the converter's plain int8 (calibration min / max),
`busi-convert`'s refined ranges (what it ships; benchmarks.int8_ranges), float fallback for the
layers the TFLite quantization debugger ranks worst, ai-edge-quantizer recipes (weight-only
int8 per op type, static int8), and int8-grid weight snapping with empirical bias correction.
Everything is fitted on validation images only.
Writes benchmarks/reports/int8_study-<arch>.{json,md}; takes ~20 minutes on 2 cores.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import util as tflite_util

from benchmarks.metrics import agreement
from convert.int8_choices import DEFAULT_INT8_RANGES
from convert.tflite import compacted, convert_model, float32_weight_bytes, int8_converter
from edge_infer.datasets import (
    bus_bra_split_files,
    load_images,
    resolve_bus_bra_dir,
    resolve_busi_dir,
    split_files,
)
from edge_infer.decision import argmax_indices
from edge_infer.manifest import resolve_model
from edge_infer.rates import bootstrap_interval

REPORTS = Path(__file__).resolve().parent / "reports"
FALLBACK_COUNTS = (3, 10)
CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def tflite_probabilities(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Class probabilities of any of the study's models (float, uint8 or int8 input/output)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes, num_threads=2)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = next(o for o in interpreter.get_output_details() if len(o["shape"]) == 2)
    rows = []
    for image in images:
        pixels = image[None].astype(np.float32)
        if source["dtype"] != np.float32:
            scale, zero = source["quantization"]
            info = np.iinfo(source["dtype"])
            pixels = np.clip(np.round(pixels / scale + zero), info.min, info.max)
        interpreter.set_tensor(source["index"], pixels.astype(source["dtype"]))
        interpreter.invoke()
        out = interpreter.get_tensor(target["index"])[0].astype(np.float64)
        if target["dtype"] != np.float32:
            scale, zero = target["quantization"]
            out = (out - zero) * scale
        rows.append(out)
    return np.stack(rows)


def debugger_ranking(model: keras.Model, calibration: np.ndarray) -> list[dict]:
    """Quantized layers by RMSE against float, in units of the layer's quantization step."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(model, calibration),
        debug_dataset=lambda: ([image[None].astype(np.float32)] for image in calibration))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    rows = [{"op": row["op_name"], "tensor": row["tensor_name"],
             "rmse_steps": float(np.sqrt(float(row["mean_squared_error"])) / float(row["scale"]))}
            for row in csv.DictReader(dump) if float(row["scale"] or 0) > 0]
    return sorted(rows, key=lambda row: -row["rmse_steps"])


def int8_with_float_fallback(model: keras.Model, calibration: np.ndarray,
                             tensors: list[str]) -> bytes:
    """Full-integer model except the ops that output `tensors`, which stay float; uint8 I/O."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(model, calibration),
        debug_dataset=lambda: ([image[None].astype(np.float32)] for image in calibration),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=tensors))
    return tflite_util.modify_model_io_type(debugger.get_nondebug_quantized_model(),
                                            tf.uint8, tf.uint8)


def ai_edge_quantized(float_model: bytes, configure: Callable, calibration: np.ndarray) -> bytes:
    """A float32 TFLite model quantized by ai-edge-quantizer; `configure(quantizer)` sets the
    recipe; static recipes are calibrated on the given images."""
    from ai_edge_quantizer import quantizer

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "float32.tflite"
        path.write_bytes(float_model)
        qt = quantizer.Quantizer(str(path))
        configure(qt)
        ranges = None
        if qt.need_calibration:
            key, name = _signature_input(path)
            ranges = qt.calibrate({key: [{name: image[None].astype(np.float32)}
                                         for image in calibration]}, num_threads=2)
        return bytes(qt.quantize(ranges, enable_progress_report=False).quantized_model)


def _signature_input(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


ConvAndNorm = tuple[keras.layers.Layer, keras.layers.Layer | None]


def _conv_bn_pairs(backbone: keras.Model) -> list[ConvAndNorm]:
    """Each convolution with the BatchNorm that follows it (None when it has its own bias)."""
    pairs = []
    for conv, after in zip(backbone.layers, [*backbone.layers[1:], None]):
        if isinstance(conv, CONV_LAYERS):
            folded = (isinstance(after, keras.layers.BatchNormalization)
                      and after.input is conv.output)
            pairs.append((conv, after if folded else None))
    return pairs


def folding_scale(batch_norm: keras.layers.Layer) -> np.ndarray:
    """Per-channel factor a BatchNorm multiplies its convolution's kernel by when folded:
    gamma / sqrt(moving variance + epsilon)."""
    return (np.asarray(batch_norm.gamma, np.float64)
            / np.sqrt(np.asarray(batch_norm.moving_variance, np.float64) + batch_norm.epsilon))


def snap_to_int8_grid(conv: keras.layers.Layer, batch_norm: keras.layers.Layer | None) -> None:
    """Round the kernel to TFLite's symmetric per-channel int8 grid of the BN-folded weights."""
    kernel = np.asarray(conv.kernel, np.float64)
    axis = 2 if isinstance(conv, keras.layers.DepthwiseConv2D) else 3
    fold = np.ones(kernel.shape[axis]) if batch_norm is None else folding_scale(batch_norm)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    folded = kernel * fold.reshape(shape)
    step = np.abs(folded).max(axis=tuple(a for a in range(4) if a != axis), keepdims=True) / 127
    step[step == 0] = 1.0
    conv.kernel.assign((np.round(folded / step) * step / fold.reshape(shape)).astype(np.float32))


def channel_means(backbone: keras.Model, layer: keras.layers.Layer,
                  images: np.ndarray) -> np.ndarray:
    """Per-channel mean of a layer's output over images and positions."""
    probe = keras.Model(backbone.input, layer.output)
    total = sum(np.asarray(probe(images[i:i + 16].astype(np.float32), training=False),
                           np.float64).sum(axis=(0, 1, 2)) for i in range(0, len(images), 16))
    return total / (len(images) * np.prod(layer.output.shape[1:3]))


def snapped_with_bias_correction(path: Path, images: np.ndarray) -> keras.Model:
    """The model with int8-grid weights, layer by layer, each layer's bias (BN beta) shifted so
    its output mean on `images` matches the original's (empirical bias correction)."""
    reference, model = keras.models.load_model(path), keras.models.load_model(path)
    reference_backbone, backbone = (next(layer for layer in m.layers
                                         if isinstance(layer, keras.Model))
                                    for m in (reference, model))
    for conv, batch_norm in _conv_bn_pairs(backbone):
        snap_to_int8_grid(conv, batch_norm)
        output = batch_norm or conv
        shift = (channel_means(backbone, output, images)
                 - channel_means(reference_backbone,
                                 reference_backbone.get_layer(output.name), images))
        bias = batch_norm.beta if batch_norm is not None else conv.bias
        bias.assign((np.asarray(bias) - shift).astype(np.float32))
    return model


def _weight_only(op: str) -> Callable:
    def configure(qt) -> None:
        qt.add_weight_only_config(".*", op, 8)
    return configure


def _static_int8(qt) -> None:
    from ai_edge_quantizer import recipe

    qt.load_quantization_recipe(recipe.static_wi8_ai8())


def study_options(report: str) -> Callable:
    """The options every int8 study takes: --arch, --busi-dir and --out (the folder for
    <report>-<arch>.json and .md)."""
    options = [
        click.option("--arch", default="efficientnet-lite0", show_default=True),
        click.option("--busi-dir", type=click.Path(file_okay=False),
                     help="BUSI folder (or $BUSI_DIR)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=REPORTS,
                     show_default=True, help=f"Folder for {report}-<arch>.json and .md."),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def default_note(int8_ranges: str) -> str:
    """Marks the row made the way `busi-convert` makes its int8 by default."""
    return " (busi-convert's default)" if int8_ranges == DEFAULT_INT8_RANGES else ""


def model_label(arch: str, source) -> str:
    """How a study's report names the Keras model it started from."""
    return f"{arch} ({source.info['file']}, sha256 {source.info['sha256'][:12]})"


def write_reports(results: dict, out: Path, name: str,
                  write_markdown: Callable[[dict, Path], None]) -> None:
    """A study's results as out/<name>.json and its table as out/<name>.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / f"{name}.md")
    click.echo(f"wrote {out / f'{name}.md'}")


def study_inputs(arch: str, busi_dir: str | None) -> tuple:
    """What every int8 study starts from: the shipped Keras model's manifest entry, the model,
    the BUSI validation and test images, and the model's probabilities on them."""
    source = resolve_model(f"{arch}/keras")
    root = resolve_busi_dir(busi_dir)
    data = {split: load_images(split_files(split), root, desc=split)[0]
            for split in ("val", "test")}
    model = keras.models.load_model(source.path)
    keras_probs = {split: model.predict(images.astype(np.float32), verbose=0)
                   for split, images in data.items()}
    return source, model, data, keras_probs


def margin_counts(keras_probs: np.ndarray) -> dict[str, int]:
    """How many images the Keras model itself barely decides (top-2 probability margin)."""
    top2 = np.sort(keras_probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return {f"below_{limit:.4g}": int((margin < limit).sum())
            for limit in (1 / 256, 0.02, 0.05, 0.1)}


def margins_text(margins: dict[str, int]) -> str:
    """`margin_counts` as a sentence fragment: "1 below 0.003906, 4 below 0.02, ..."."""
    return ", ".join(f"{count} below {limit.removeprefix('below_')}"
                     for limit, count in margins.items())


def distillation_images(busi_root: Path) -> np.ndarray:
    """BUSI + BUS-BRA training images: what the QAT and rounding studies train on (never
    validation)."""
    busi = load_images(split_files("train"), busi_root, desc="BUSI train")[0]
    bus_bra = load_images(bus_bra_split_files("train"), resolve_bus_bra_dir(None),
                          desc="BUS-BRA train")[0]
    return np.concatenate([busi, bus_bra])


def non_test_images(busi_root: Path, busi_val: np.ndarray) -> dict[str, np.ndarray]:
    """Every non-test image, in two parts: held_out (BUSI + BUS-BRA validation) and
    trained_on (BUSI + BUS-BRA train: the Keras model's training images, and those the QAT
    and rounding studies learn on)."""
    bus_bra = resolve_bus_bra_dir(None)
    return {
        "held_out": np.concatenate([busi_val, load_images(
            bus_bra_split_files("val"), bus_bra, desc="BUS-BRA val")[0]]),
        "trained_on": distillation_images(busi_root),
    }


def agreement_interval(keras_probs: np.ndarray, probs: np.ndarray) -> list[float]:
    """95 % percentile-bootstrap interval of the top-1 agreement (edge_infer.rates)."""
    same = argmax_indices(keras_probs) == argmax_indices(probs)
    return list(bootstrap_interval(lambda indices: float(same[indices].mean()), len(same)))


def flipped_images(keras_probs: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Test images whose top-1 differs from Keras, with Keras's own top-2 margin."""
    top2 = np.sort(keras_probs, axis=1)[:, -2:]
    return [{"index": int(i), "keras_margin": float(top2[i, 1] - top2[i, 0])}
            for i in np.nonzero(argmax_indices(keras_probs) != argmax_indices(probs))[0]]


def flipped_text(flipped: list[dict]) -> str:
    """The Keras top-2 margins of the flipped test images, for a report's table cell."""
    return ", ".join(f"{f['keras_margin']:.3f}" for f in flipped)


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# int8 study: {results['model']}", "",
             "Each row: the same Keras model converted one way, compared with Keras on the BUSI "
             "validation and test images (fixes fitted on validation images only).", "",
             "| model | val agreement | test agreement | test max abs Δp | test mean abs Δp "
             "| MB | × smaller |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['val']['agreement']:.3f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['max_abs_dprob']:.3f} | "
                     f"{row['test']['mean_abs_dprob']:.4f} | {row['bytes'] / 1e6:.2f} | "
                     f"{results['float32_weight_bytes'] / row['bytes']:.2f} |")
    lines += ["", "Debugger ranking (RMSE in quantization steps, validation images), worst 5:", ""]
    lines += [f"- {row['rmse_steps']:.2f} {row['op']} `{row['tensor'][:90]}`"
              for row in results["debugger_worst"]]
    lines += ["", "The same after int8-grid snapping and bias correction (1/√12 = 0.29 steps is "
              "pure rounding), worst 5:", ""]
    lines += [f"- {row['rmse_steps']:.2f} {row['op']} `{row['tensor'][:90]}`"
              for row in results["debugger_worst_after_snapping"]]
    lines += ["", "Test images the Keras model barely decides (top-2 probability margin): "
              f"{margins_text(results['test_margins'])} (1/256 = 0.0039 is one step of the "
              "int8 model's uint8 output).", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_study")
def main(arch: str, busi_dir: str | None, out: Path) -> None:
    source, model, data, keras_probs = study_inputs(arch, busi_dir)
    rows = []

    def measure(name: str, model_bytes: bytes) -> None:
        model_bytes = compacted(model_bytes)  # sizes compare like with like (busi-convert's)
        row = {"name": name, "bytes": len(model_bytes)}
        for split, images in data.items():
            row[split] = agreement(keras_probs[split], tflite_probabilities(model_bytes, images))
        rows.append(row)
        click.echo(f"{name}: test agreement {row['test']['agreement']:.3f}, "
                   f"max |dp| {row['test']['max_abs_dprob']:.3f}", err=True)

    calibration = data["val"]
    measure(f"int8, TFLite converter (calibration min / max){default_note('minmax')}",
            convert_model(model, "int8", calibration, int8_ranges="minmax"))
    measure(f"int8, refined ranges{default_note('refined')}",
            convert_model(model, "int8", calibration, int8_ranges="refined"))
    ranking = debugger_ranking(model, calibration)
    for count in FALLBACK_COUNTS:
        measure(f"int8, {count} worst layers (debugger) in float",
                int8_with_float_fallback(model, calibration,
                                         [row["tensor"] for row in ranking[:count]]))
    float32 = convert_model(model, "float32")
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "*"):
        label = "all ops" if op == "*" else op
        measure(f"ai-edge-quantizer weight-only int8 ({label}), float activations",
                ai_edge_quantized(float32, _weight_only(op), calibration))
    measure("ai-edge-quantizer static int8 (static_wi8_ai8)",
            ai_edge_quantized(float32, _static_int8, calibration))
    corrected = snapped_with_bias_correction(source.path, calibration)
    rows.append({"name": "Keras, int8-grid weights + bias correction (float)",
                 "bytes": float32_weight_bytes(corrected),
                 **{split: agreement(keras_probs[split],
                                     corrected.predict(images.astype(np.float32), verbose=0))
                    for split, images in data.items()}})
    measure("int8 of the grid-snapped, bias-corrected model",
            convert_model(corrected, "int8", calibration, int8_ranges="minmax"))
    measure("int8 (refined ranges) of the grid-snapped, bias-corrected model",
            convert_model(corrected, "int8", calibration, int8_ranges="refined"))
    corrected_ranking = debugger_ranking(corrected, calibration)
    results = {"model": model_label(arch, source),
               "float32_weight_bytes": float32_weight_bytes(model), "rows": rows,
               "debugger_worst": ranking[:5],
               "debugger_worst_after_snapping": corrected_ranking[:5],
               "test_margins": margin_counts(keras_probs["test"])}
    write_reports(results, out, f"int8_study-{arch}", write_markdown)


if __name__ == "__main__":
    main()
