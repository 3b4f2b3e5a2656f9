"""Write a run's results: `latest.json` (everything) and `latest.md` (what a person reads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.calibration_markdown import SITE_HEADING, calibration_lines, site_lines
from benchmarks.cam_markdown import CAM_HEADING, cam_section
from benchmarks.fidelity import HEADING as FIDELITY_HEADING
from benchmarks.fidelity import fidelity_section
from benchmarks.ood_eval import HEADING as OOD_HEADING
from benchmarks.ood_eval import ood_section
from benchmarks.sites import sites_section
from benchmarks.targets import INT8, KERAS_PREDICT, KERAS_TF_FUNCTION
from edge_infer.evaluation import json_ready
from edge_infer.spec import CLASS_NAMES

JSON_NAME = "latest.json"
MARKDOWN_NAME = "latest.md"
HEADINGS: tuple[str, ...] = (
    "## Headline: int8 vs Keras",
    "## Targets",
    "## Accuracy on the test split",
    "## Per-class precision / recall / F1",
    "## Confusion matrices",
    "## External hospital (BrEaST-Lesions_USG)",
    "## Single-image latency and throughput",
    "## Cold start, memory and size",
    "## Calibration",
    "## ONNX Runtime",
    "## Method",
    "## Machine",
    SITE_HEADING,
    CAM_HEADING,
    OOD_HEADING,
    FIDELITY_HEADING,
)


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _with_interval(accuracy: dict, key: str, interval: str) -> str:
    low, high = accuracy["intervals_95"][interval]
    return f"{accuracy[key]:.3f} [{low:.3f}, {high:.3f}]"


def _plural(threads: str) -> str:
    return f"{threads} thread" + ("" if threads == "1" else "s")


def _stat(results: dict, row: str, threads: str, kind: str, stat: str = "p50") -> float | None:
    measured = results["latency"]["rows"].get(row, {}).get("by_threads", {}).get(threads)
    if not measured or kind not in measured:
        return None
    return measured[kind] if kind.startswith("throughput") else measured[kind][stat]


def _ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    return _num(a / b, digits, "×") if a and b else "—"


def headline(results: dict) -> list[str]:
    """The int8-vs-Keras table a reader sees first."""
    variants = results["variants"]
    keras, int8 = variants.get("keras", {}), variants.get(INT8)
    if int8 is None:
        return [HEADINGS[0], "", "No int8 model in the manifest for this architecture.", ""]
    rows = []
    for threads in (str(t) for t in results["latency"]["threads"]):
        for kind, label, digits in (("end_to_end_ms", "End-to-end latency p50 (ms)", 1),
                                    ("model_only_ms", "Model-only latency p50 (ms)", 1),
                                    ("throughput_images_per_s", "Throughput (images/s)", 1)):
            predict, function, mine = (_stat(results, row, threads, kind)
                                       for row in (KERAS_PREDICT, KERAS_TF_FUNCTION, INT8))
            faster = kind.startswith("throughput")
            rows.append([f"{label}, {_plural(threads)}", _num(predict, digits),
                         _num(function, digits), _num(mine, digits),
                         _ratio(mine, predict) if faster else _ratio(predict, mine),
                         _ratio(mine, function) if faster else _ratio(function, mine)])
    cold, keras_cold = int8["cold_start"], keras["cold_start"]
    rows += [
        ["Cold start: spawn → first result (s)", _num(keras_cold["seconds"], 2), "",
         _num(cold["seconds"], 2), _ratio(keras_cold["seconds"], cold["seconds"]), ""],
        ["Process peak RSS (MiB)", _num(keras_cold["peak_rss_mib"], 0), "",
         _num(cold["peak_rss_mib"], 0), _ratio(keras_cold["peak_rss_mib"], cold["peak_rss_mib"]),
         ""],
        ["Model file (MB)", _num(keras["bytes"] / 1e6, 1), "", _num(int8["bytes"] / 1e6, 1),
         _ratio(keras["bytes"], int8["bytes"]), ""],
    ]
    for key, label in (("accuracy", "Test accuracy"), ("macro_f1", "Macro-F1"),
                       ("malignant_recall_at_threshold", "Malignant recall at T")):
        a, b = keras["accuracy"][key], int8["accuracy"][key]
        rows.append([label, f"{a:.3f}", "", f"{b:.3f}", f"{(b - a) * 100:+.1f} points", ""])
    return [HEADINGS[0], "",
            "Ratios: how many times faster / smaller / lighter the int8 model is than Keras, "
            "measured in this run (accuracy rows: int8 minus Keras).", "",
            *_table(["", "Keras predict", "Keras tf.function", "TFLite int8",
                     "int8 vs Keras predict", "int8 vs Keras tf.function"], rows)]


def targets_section(results: dict) -> list[str]:
    """Every target of the issue with its measured value, met or not."""
    verdict = {True: "✅ met", False: "❌ not met", None: "— not measured"}
    rows = [[t["name"], t["goal"], _num(t["value"], 2, f" {t['unit']}"), verdict[t["met"]]]
            for t in results["targets"]]
    counts = {v: sum(t["met"] is v for t in results["targets"]) for v in (True, False, None)}
    summary = f"{counts[True]} of {len(results['targets'])} met, {counts[False]} not met"
    summary += f", {counts[None]} not measured." if counts[None] else "."
    return [HEADINGS[1], "", summary, "",
            *_table(["Target", "Goal", "Measured", "Verdict"], rows)]


def accuracy_section(results: dict) -> list[str]:
    """Headline metrics of every variant, with bootstrap intervals."""
    rows = []
    for name, info in results["variants"].items():
        acc = info["accuracy"]
        diff = acc["accuracy_minus_keras"]
        low, high = diff["interval_95"]
        rows.append([name, _with_interval(acc, "accuracy", "accuracy"),
                     f"{acc['balanced_accuracy']:.3f}",
                     _with_interval(acc, "macro_f1", "macro_f1"),
                     _with_interval(acc, "malignant_recall_at_threshold", "malignant_recall"),
                     f"{acc['malignant_specificity_at_threshold']:.3f}",
                     f"{info['threshold']:.3f}", _num(acc.get("roc_auc_ovr"), 3),
                     f"{acc['expected_calibration_error']:.3f}",
                     f"{acc['keras_agreement']['agreement']:.3f}",
                     f"{diff['value'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"])
    data = results["data"]
    counts = ", ".join(f"{n} {c}" for c, n in data["class_counts"].items())
    return [HEADINGS[2], "",
            f"{data['test_images']} test images ({counts}). Brackets: 95 % bootstrap interval "
            f"({results['settings']['resamples']} resamples, seed 0). Malignant recall and "
            "specificity at the variant's validated threshold T (called malignant if argmax "
            "or P(malignant) ≥ T). Agreement: top-1 agreement with Keras. Δ: accuracy minus "
            "Keras's in points, paired bootstrap.", "",
            *_table(["Variant", "Accuracy", "Balanced acc.", "Macro-F1", "Malignant recall @T",
                     "Specificity @T", "T", "ROC-AUC (OvR)", "ECE", "Agreement",
                     "Δ acc. vs Keras"], rows)]


def per_class_section(results: dict) -> list[str]:
    """Precision / recall / F1 of each class for every variant."""
    rows = [[name] + [" / ".join(f"{info['accuracy']['per_class'][c][k]:.2f}"
                                 for k in ("precision", "recall", "f1")) for c in CLASS_NAMES]
            for name, info in results["variants"].items()]
    return [HEADINGS[3], "", *_table(["Variant"] + [f"{c} P / R / F1" for c in CLASS_NAMES],
                                     rows)]


def confusion_section(results: dict) -> list[str]:
    """Each variant's argmax confusion matrix (rows true, columns predicted)."""
    lines = [HEADINGS[4], "", f"Rows: true class; columns: predicted (argmax), in the order "
             f"{', '.join(CLASS_NAMES)}.", "", "```text"]
    for name, info in results["variants"].items():
        matrix = info["accuracy"]["confusion_matrix"]
        lines.append(f"{name:16s} " + "   ".join(" ".join(f"{v:3d}" for v in row)
                                                 for row in matrix))
    return lines + ["```", "", f"![confusion matrices]({results['plots']['confusion_matrices']})",
                    ""]


def _figure(figures: dict, rule: str | None, key: str) -> str:
    """'0.812 [0.750, 0.870]' of one external-section figure, '—' if undefined."""
    if rule is None:
        value, (low, high) = figures[key]["value"], figures[key]["interval_95"]
    elif figures[rule] is None:
        return "—"
    else:
        value, (low, high) = figures[rule][key], figures[rule]["intervals_95"][key]
    if value is None or math.isnan(value):
        return "—"
    interval = "" if low is None or math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}{interval}"


EXTERNAL_COLUMNS: tuple[tuple[str | None, str], ...] = (
    (None, "auc_benign_vs_malignant"), ("argmax", "sensitivity"), ("argmax", "specificity"),
    ("high_sensitivity", "sensitivity"), ("high_sensitivity", "specificity"))


def _drop(busi: dict, external: dict, rule: str | None, key: str) -> str:
    """External minus BUSI test, in points."""
    def value(figures: dict) -> float | None:
        if rule is None:
            return figures[key]["value"]
        return None if figures[rule] is None else figures[rule][key]
    a, b = value(busi), value(external)
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{(b - a) * 100:+.1f} points"


def external_section(results: dict) -> list[str]:
    """Benign-vs-malignant figures on another hospital's images beside the BUSI test split."""
    external = results.get("external") or {"skipped": "this run has no external-set results"}
    if "skipped" in external:
        return [HEADINGS[5], "", f"Skipped: {external['skipped']}.", ""]
    rows = []
    for name, info in external["variants"].items():
        busi, ext = info["busi_test"], info["external"]
        for label, figures in (("BUSI test", busi), ("External", ext)):
            counts = figures["class_counts"]
            rows.append([name, label, " / ".join(str(counts[c]) for c in CLASS_NAMES),
                         *(_figure(figures, rule, key) for rule, key in EXTERNAL_COLUMNS[:3]),
                         f"{info['threshold']:.3f}",
                         *(_figure(figures, rule, key) for rule, key in EXTERNAL_COLUMNS[3:])])
        rows.append(["", "**Δ external − BUSI**", "",
                     *(_drop(busi, ext, rule, key) for rule, key in EXTERNAL_COLUMNS[:3]), "",
                     *(_drop(busi, ext, rule, key) for rule, key in EXTERNAL_COLUMNS[3:])])
    counts = ", ".join(f"{n} {c}" for c, n in external["class_counts"].items())
    subset = ("" if external["stride"] == 1 else
              f", every {external['stride']}th of labels.csv (a quick run),")
    resamples = results["settings"]["resamples"]
    return [HEADINGS[5], "",
            f"{external['name']}: {external['n']} images ({counts}){subset} from another "
            "hospital and other scanners than BUSI, tested as shipped: nothing is trained, "
            "calibrated or chosen on it, and each model keeps the temperature and threshold T "
            "fitted on its own validation data (manifest). Source: "
            + external["citation"] + ".", "",
            "AUROC: P(malignant), malignant against benign images (normals left out). "
            "Sensitivity: malignant images called malignant; specificity: all other images "
            "(normals included) not called malignant; by argmax, and in high-sensitivity mode "
            "(malignant when argmax or P(malignant) ≥ T). Brackets: 95 % bootstrap interval "
            f"({resamples} resamples, seed 0). The int8 row is what `edge-infer evaluate "
            "--labels labels.csv --mode high-sensitivity` prints for the same images.", "",
            *_table(["Variant", "Images", "Normal / benign / malignant",
                     "AUROC benign vs malignant",
                     "Sensitivity (argmax)", "Specificity (argmax)", "T", "Sensitivity @T",
                     "Specificity @T"], rows)]


def latency_section(results: dict) -> list[str]:
    """p50/p90/p99 end to end and model only, throughput and ratios, per thread count."""
    lines = [HEADINGS[6], "",
             "End to end: read the file, decode, preprocess, run, decide (one image, cycling "
             "through the test files). Model only: the runtime call on a preprocessed image. "
             f"{results['settings']['runs']} timed runs after {results['settings']['warmup']} "
             "warm-up runs, each variant and thread count in its own fresh process. "
             "Throughput: every test image from preprocessed arrays (Keras and ONNX Runtime in "
             "batches of 32, TFLite one image per invoke). ×: Keras p50 / variant p50, end to "
             "end.", ""]
    for threads in (str(t) for t in results["latency"]["threads"]):
        rows = []
        for row in results["latency"]["rows"]:
            cells = []
            for kind in ("end_to_end_ms", "model_only_ms"):
                cells.append(" / ".join(_num(_stat(results, row, threads, kind, s), 1)
                                        for s in ("p50", "p90", "p99")))
            e2e = _stat(results, row, threads, "end_to_end_ms")
            rows.append([row, *cells,
                         _num(_stat(results, row, threads, "throughput_images_per_s"), 1),
                         _ratio(_stat(results, KERAS_PREDICT, threads, "end_to_end_ms"), e2e),
                         _ratio(_stat(results, KERAS_TF_FUNCTION, threads, "end_to_end_ms"),
                                e2e)])
        lines += [f"### {_plural(threads)}", "",
                  *_table(["Variant", "End to end p50 / p90 / p99 (ms)",
                           "Model only p50 / p90 / p99 (ms)", "Throughput (images/s)",
                           "× vs Keras predict", "× vs Keras tf.function"], rows)]
        checks = [f"{row} " + " / ".join(_num(_stat(results, row, threads, "input_check_ms", s),
                                              2) for s in ("p50", "p90", "p99"))
                  for row in results["latency"]["rows"]
                  if _stat(results, row, threads, "input_check_ms") is not None]
        if checks:
            lines += ["Input check alone (colour, frame checks on a 64 px thumbnail, feature "
                      "distance), inside end to end, p50 / p90 / p99 (ms): "
                      + "; ".join(checks) + ".", ""]
    return lines + [f"![latency]({results['plots']['latency']})", ""]


def resources_section(results: dict) -> list[str]:
    """Cold start, peak RSS and file size of every variant, against Keras."""
    rows = []
    for name, info in results["variants"].items():
        cold, ratios = info["cold_start"], results["ratios"]["resources"][name]
        rows.append([name, _num(cold["seconds"], 2), _num(cold["peak_rss_mib"], 0),
                     "yes" if cold["tensorflow_imported"] else "no",
                     _num(info["bytes"] / 1e6, 2),
                     _num(ratios["size_vs_keras"], 1, "×"),
                     _num(ratios["cold_start_vs_keras"], 1, "×"),
                     _num(ratios["peak_rss_vs_keras"], 1, "×")])
    repeats = results["settings"]["cold_repeats"]
    return [HEADINGS[7], "",
            f"Cold start: a fresh Python process imports the runtime, loads the model and "
            f"classifies one image file; seconds from spawn to its first result (median of "
            f"{repeats}). TFLite variants take the edge runtime's path (`edge_infer.Classifier`). "
            "Peak RSS: the child's own high-water mark (VmHWM; on Linux `getrusage` would report "
            "the parent's peak across fork + exec).", "",
            *_table(["Variant", "Cold start (s)", "Peak RSS (MiB)", "TensorFlow imported",
                     "File (MB)", "× smaller than Keras", "× faster cold start",
                     "× less memory"], rows),
            f"![accuracy vs size]({results['plots']['accuracy_vs_size']})", ""]


def calibration_section(results: dict) -> list[str]:
    """Temperatures, ECE / Brier before and after, the reliability diagrams, and the test
    figures at the calibrated threshold (benchmarks.calibration_markdown)."""
    return calibration_lines(results)


def onnx_section(results: dict) -> list[str]:
    """How the ONNX variants were made, and why any is missing."""
    lines = [HEADINGS[9], ""]
    fp32, int8 = results["onnx"].get("float32"), results["onnx"].get("int8")
    if fp32:
        extra = fp32["extra_inputs"]
        lines.append(f"- **onnx-float32**: {fp32['route']}, opset {fp32['opset']}; leftover "
                     f"graph inputs dropped: {', '.join(extra['dropped']) or 'none'}; frozen "
                     f"into initializers: {', '.join(extra['frozen']) or 'none'}; max |Δp| vs "
                     f"Keras on {fp32['check_images']} validation images "
                     f"{fp32['max_abs_dprob_vs_keras']:.1e}.")
    if int8:
        lines.append(f"- **onnx-int8**: {int8['route']}, calibrated on "
                     f"{int8['calibration_images']} validation images.")
    lines += [f"- **{name}** not measured: {reason}"
              for name, reason in results["skipped"].items() if name.startswith("onnx-")]
    lines.append("- ONNX thresholds T are chosen on the validation split with "
                 "`edge_infer.calibration.choose_threshold`, as the shipped models' were.")
    return lines + [""]


def method_section(results: dict) -> list[str]:
    """What was measured and how, in a few lines."""
    data = results["data"]
    return [HEADINGS[10], "",
            f"- Images: {data['test_images']} test images (and {data['val_images']} validation "
            "images for the ONNX thresholds and int8 calibration) of the split manifest, "
            "through the one shared preprocessing (`edge_infer.preprocess`).",
            "- Metrics, agreement with Keras included: `benchmarks/metrics.py`.",
            "- Keras is timed two ways: `model.predict` on one image, and "
            "`model(x, training=False)` inside a `tf.function`.",
            "- TensorFlow, TFLite and ONNX Runtime are each limited to the stated thread count "
            "(TensorFlow intra- and inter-op pools; ONNX Runtime intra-op, inter-op 1).",
            f"- Command: `{results['command']}`; total time {results['duration_s']:.0f} s.", ""]


def machine_section(results: dict) -> list[str]:
    """The machine and package versions."""
    machine = results["machine"]
    rows = [["CPU", machine["cpu"]],
            ["Cores (logical / usable)", f"{machine['cores_logical']} / {machine['cores_usable']}"],
            ["Platform", machine["platform"]], ["Python", machine["python"]],
            ["Load average at start (1/5/15 min)", _load(machine["load_average_1_5_15"])],
            ["Load average at end", _load(machine.get("load_average_at_end"))]]
    rows += [[name, version] for name, version in machine["packages"].items()]
    return [HEADINGS[11], "", *_table(["", ""], rows)]


def _load(values: list[float] | None) -> str:
    return "—" if values is None else " / ".join(f"{v:.2f}" for v in values)


def _preamble(results: dict) -> list[str]:
    machine, data = results["machine"], results["data"]
    lines = [f"# Benchmark: {results['arch']}, every variant against the Keras model", "",
             f"{results['created']} · {machine['cpu']} ({machine['cores_usable']} usable cores) · "
             f"Python {machine['python']} · {data['test_images']} test images · "
             f"`{results['command']}`", ""]
    if results["settings"]["quick"]:
        lines += ["> **Quick run** (a few images and repeats): proves the benchmark works; "
                  "its numbers mean little.", ""]
    lines += [f"> **{name} not measured**: {reason}." for name, reason in
              results["skipped"].items()] + ([""] if results["skipped"] else [])
    load = (machine["load_average_1_5_15"] or [0])[0]
    if machine["cores_usable"] and load > 0.5 * machine["cores_usable"]:
        lines += [f"> The machine was busy when this run started (load average {load:.2f} on "
                  f"{machine['cores_usable']} cores): latencies are pessimistic.", ""]
    return lines


def markdown(results: dict) -> str:
    """The whole report as Markdown."""
    sections = (_preamble, headline, targets_section, accuracy_section, per_class_section,
                confusion_section, external_section, fidelity_section, sites_section,
                latency_section, resources_section, calibration_section, site_lines,
                cam_section, ood_section, onnx_section, method_section, machine_section)
    return "\n".join(line for section in sections for line in section(results))


def write_report(results: dict, out: Path) -> tuple[Path, Path]:
    """Write latest.json and latest.md into out; returns their paths."""
    json_path, md_path = out / JSON_NAME, out / MARKDOWN_NAME
    json_path.write_text(json.dumps(json_ready(results), indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
