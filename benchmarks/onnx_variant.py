"""The Keras model as ONNX (fp32) and ONNX Runtime's own static int8 of it.

Route: Keras 3 `model.export(format="onnx")` (tf2onnx underneath). That export leaves a
Normalization layer's mean and variance (captured tensors) as extra graph inputs: those no
node reads (tf2onnx folded the values in) are dropped, any that are read are frozen into
initializers with the layer's own values; the result is checked against Keras. The int8
model is ONNX Runtime's static QDQ quantization (uint8 activations, per-channel int8
weights), calibrated on the validation images.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MAX_EXPORT_DIFF = 1e-3  # max |dprob| between Keras and its fp32 ONNX export on check images
# Where tf2onnx leaves a Normalization layer's captured tensors: '<scope>/<layer>/Sub/y:0'.
NORMALIZATION_INPUTS = {"Sub/y": "mean", "Sqrt/x": "variance"}


class OnnxUnavailable(RuntimeError):
    """The ONNX variant could not be made; the message says why (it goes in the report)."""


def _walk(layer) -> Iterator:
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from _walk(sub)


def _normalization_value(model, input_name: str, shape: list[int]) -> np.ndarray:
    """The mean or variance a Normalization layer computes with, for one leftover input."""
    import keras

    parts = input_name.split(":")[0].split("/")
    kind = NORMALIZATION_INPUTS.get("/".join(parts[-2:]))
    layers = [layer for layer in _walk(model) if isinstance(layer, keras.layers.Normalization)]
    scope = parts[-3] if len(parts) >= 3 else ""
    named = [layer for layer in layers
             if scope == layer.name or re.fullmatch(re.escape(layer.name) + r"_\d+", scope)]
    matches = named if len(named) == 1 else layers if len(layers) == 1 else []
    if kind is None or not matches:
        raise OnnxUnavailable(f"the ONNX export has an extra graph input {input_name!r} that "
                              "is not a Normalization layer's mean or variance")
    value = keras.ops.convert_to_numpy(getattr(matches[0], kind))
    return np.asarray(value, dtype=np.float32).reshape(shape)


def freeze_extra_inputs(path: Path, model) -> dict[str, list[str]]:
    """Drop leftover graph inputs no node reads, freeze the rest; returns both names."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    initialized = {init.name for init in graph.initializer}
    read = {name for node in graph.node for name in node.input}
    done: dict[str, list[str]] = {"dropped": [], "frozen": []}
    for inp in [inp for inp in graph.input[1:] if inp.name not in initialized]:
        if inp.name in read:
            shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            value = _normalization_value(model, inp.name, shape)
            graph.initializer.append(numpy_helper.from_array(value, inp.name))
        done["frozen" if inp.name in read else "dropped"].append(inp.name)
        graph.input.remove(inp)
    if done["dropped"] or done["frozen"]:
        onnx.checker.check_model(graph_model)
        onnx.save(graph_model, str(path))
    return done


def export_fp32(model, path: Path, check_images: np.ndarray) -> dict:
    """Export the Keras model to ONNX, freeze leftover inputs and check it against Keras."""
    import onnxruntime as ort

    try:
        import tf2onnx  # noqa: F401  (Keras's ONNX export needs it)
    except ImportError:
        raise OnnxUnavailable("tf2onnx is not installed (pip install 'busi-edge[bench]')") from None
    batch = check_images.astype(np.float32)
    reference = model.predict(batch, verbose=0)  # also makes sure the model has been called
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras's tf2onnx patch probes np.object
        model.export(str(path), format="onnx", verbose=False)
    extra_inputs = freeze_extra_inputs(path, model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if len(session.get_inputs()) != 1:
        raise OnnxUnavailable(f"the ONNX export takes {len(session.get_inputs())} inputs, not 1")
    probs = session.run(None, {session.get_inputs()[0].name: batch})[0]
    diff = float(np.abs(probs - reference).max())
    if diff > MAX_EXPORT_DIFF:
        raise OnnxUnavailable(f"the ONNX export differs from Keras by up to {diff:.4f} "
                              f"(> {MAX_EXPORT_DIFF}) in probability")
    return {"route": "Keras Model.export(format='onnx') (tf2onnx)", "opset": _opset(path),
            "extra_inputs": extra_inputs, "max_abs_dprob_vs_keras": diff,
            "check_images": int(len(check_images))}


def _opset(path: Path) -> int:
    import onnx

    opsets = onnx.load(str(path)).opset_import
    return int(next(o.version for o in opsets if o.domain in ("", "ai.onnx")))


class _Calibration:
    """An ONNX Runtime CalibrationDataReader (duck-typed) over preprocessed uint8 images."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.input_name = input_name
        self.images = iter(images)

    def get_next(self) -> dict | None:
        """The next image as a feed dict, None when done."""
        image = next(self.images, None)
        return None if image is None else {self.input_name: image[None].astype(np.float32)}


def quantize_int8(fp32_path: Path, path: Path, calibration: np.ndarray) -> dict:
    """Static QDQ int8 (uint8 activations, per-channel int8 weights) calibrated on images."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_name(path.stem + ".prepared.onnx")
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    reader = _Calibration(input_name, calibration)
    try:
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(path), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    except Exception as err:  # any failure of the quantizer is reported, not fatal
        raise OnnxUnavailable(f"ONNX Runtime static quantization failed: "
                              f"{type(err).__name__}: {err}") from None
    finally:
        prepared.unlink(missing_ok=True)
    return {"route": "onnxruntime.quantization.quantize_static (QDQ, U8 activations, "
                     "per-channel S8 weights, MinMax)",
            "calibration_images": int(len(calibration))}
