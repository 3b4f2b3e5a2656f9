"""Ratios against Keras measured in the same run, and the issue's targets, met or not.

A ratio above 1 means the variant is that many times faster (or smaller, or lighter) than
Keras. Latency comparisons use the median (p50) of single-image end-to-end times.
"""

from __future__ import annotations

KERAS_PREDICT = "keras (predict)"
KERAS_TF_FUNCTION = "keras (tf.function)"
INT8 = "tflite-int8"
TFLITE_FLOAT32 = "tflite-float32"
ONNX_PREFIX = "onnx-"

MIN_SPEEDUP_VS_KERAS = 10.0
MIN_SPEEDUP_VS_FLOAT32 = 1.5
MAX_COLD_START_S = 0.5
MAX_PEAK_RSS_MIB = 100.0
MAX_ACCURACY_DROP_POINTS = 1.0


def _measured(latency: dict, row: str, threads: str) -> dict:
    return latency["rows"].get(row, {}).get("by_threads", {}).get(threads, {})


def _p50(latency: dict, row: str, threads: str, kind: str = "end_to_end_ms") -> float | None:
    measured = _measured(latency, row, threads)
    return measured[kind]["p50"] if measured else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def latency_ratios(latency: dict) -> dict:
    """Per thread count and row: how many times faster than each Keras call, and throughput."""
    ratios: dict = {}
    for threads in (str(t) for t in latency["threads"]):
        ratios[threads] = {}
        for row, measured in latency["rows"].items():
            if threads not in measured["by_threads"]:
                continue
            entry = {}
            for kind in ("end_to_end_ms", "model_only_ms"):
                short = kind.removesuffix("_ms")
                for name, keras_row in (("keras_predict", KERAS_PREDICT),
                                        ("keras_tf_function", KERAS_TF_FUNCTION)):
                    entry[f"{short}_vs_{name}"] = _ratio(_p50(latency, keras_row, threads, kind),
                                                         _p50(latency, row, threads, kind))
            entry["throughput_vs_keras_predict"] = _ratio(
                measured["by_threads"][threads]["throughput_images_per_s"],
                _measured(latency, KERAS_PREDICT, threads).get("throughput_images_per_s"))
            ratios[threads][row] = entry
    return ratios


def resource_ratios(variants: dict) -> dict:
    """Per variant: cold start, peak RSS and file size of Keras divided by the variant's."""
    keras = variants.get("keras", {})
    out = {}
    for name, info in variants.items():
        cold, keras_cold = info.get("cold_start", {}), keras.get("cold_start", {})
        out[name] = {
            "cold_start_vs_keras": _ratio(keras_cold.get("seconds"), cold.get("seconds")),
            "peak_rss_vs_keras": _ratio(keras_cold.get("peak_rss_mib"), cold.get("peak_rss_mib")),
            "size_vs_keras": _ratio(keras.get("bytes"), info.get("bytes")),
        }
    return out


def _target(name: str, goal: str, value: float | None, met: bool | None, unit: str) -> dict:
    return {"name": name, "goal": goal, "value": value, "unit": unit,
            "met": None if value is None else met}


def check_targets(variants: dict, latency: dict) -> list[dict]:
    """The issue's targets for the int8 model, each with its measured value and verdict."""
    targets = []
    for threads in (str(t) for t in latency["threads"]):
        int8 = _p50(latency, INT8, threads)
        suffix = f" ({threads} thread{'s' if threads != '1' else ''})"
        speedup = _ratio(_p50(latency, KERAS_PREDICT, threads), int8)
        targets.append(_target("int8 end-to-end vs Keras predict" + suffix,
                               f">= {MIN_SPEEDUP_VS_KERAS:g}x faster", speedup,
                               speedup is not None and speedup >= MIN_SPEEDUP_VS_KERAS, "x"))
        speedup = _ratio(_p50(latency, TFLITE_FLOAT32, threads), int8)
        targets.append(_target("int8 end-to-end vs TFLite float32" + suffix,
                               f">= {MIN_SPEEDUP_VS_FLOAT32:g}x faster", speedup,
                               speedup is not None and speedup >= MIN_SPEEDUP_VS_FLOAT32, "x"))
        onnx = [p for row in latency["rows"] if row.startswith(ONNX_PREFIX)
                if (p := _p50(latency, row, threads)) is not None]
        speedup = _ratio(min(onnx), int8) if onnx else None
        targets.append(_target("int8 end-to-end vs ONNX Runtime's fastest" + suffix,
                               ">= 1x (no slower)", speedup,
                               speedup is not None and speedup >= 1.0, "x"))
    cold = variants.get(INT8, {}).get("cold_start", {})
    targets.append(_target("int8 cold start (spawn -> first result)",
                           f"<= {MAX_COLD_START_S:g} s", cold.get("seconds"),
                           (cold.get("seconds") or 0) <= MAX_COLD_START_S, "s"))
    targets.append(_target("int8 process peak RSS", f"<= {MAX_PEAK_RSS_MIB:g} MiB",
                           cold.get("peak_rss_mib"),
                           (cold.get("peak_rss_mib") or 0) <= MAX_PEAK_RSS_MIB, "MiB"))
    int8_acc = variants.get(INT8, {}).get("accuracy", {}).get("accuracy")
    keras_acc = variants.get("keras", {}).get("accuracy", {}).get("accuracy")
    drop = None if int8_acc is None or keras_acc is None else (keras_acc - int8_acc) * 100
    targets.append(_target("int8 test accuracy below Keras",
                           f"<= {MAX_ACCURACY_DROP_POINTS:g} point", drop,
                           drop is not None and drop <= MAX_ACCURACY_DROP_POINTS + 1e-9,
                           "points"))
    return targets
