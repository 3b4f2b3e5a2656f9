"""The benchmark: its metric helpers on hand-computed cases, the ONNX input freezing, the
target verdicts, a `--quick` run of `python -m busi bench` written into a temporary folder, and
a small run of the web app's load test (`python -m busi load`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from required import missing

from benchmarks.external import VARIANTS as EXTERNAL_VARIANTS
from benchmarks.fidelity import POOLED, fidelity_results
from benchmarks.plots import PLOTS
from benchmarks.report import HEADINGS, JSON_NAME, MARKDOWN_NAME, external_section
from benchmarks.targets import check_targets
from edge_infer.decision import argmax_indices, decide
from edge_infer.evaluation import malignant_figures
from edge_infer.manifest import MANIFEST_FILENAME, models_dir, read_manifest
from edge_infer.metrics import (
    agreement,
    auc_benign_vs_malignant,
    bootstrap_headline,
    bootstrap_interval,
    classification_metrics,
    expected_calibration_error,
    lesion_metrics,
    malignant_called,
    reliability_bins,
    roc_benign_vs_malignant,
)
from edge_infer.spec import CLASS_NAMES
from train.datasets import LABELS_FILENAME, resolve_external_dir

PROJECT = Path(__file__).resolve().parent.parent


# --- expected calibration error -------------------------------------------------------------


def test_ece_is_zero_when_confident_and_right() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 2]), probs) == 0.0


def test_ece_one_bin_by_hand() -> None:
    # Both at confidence 0.8 (bin [0.8, 0.9)), one right: |0.5 - 0.8| = 0.3.
    probs = np.array([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1]])
    assert expected_calibration_error(np.array([0, 1]), probs) == pytest.approx(0.3)


def test_ece_two_bins_by_hand() -> None:
    # 0.9 right (|1 - 0.9| = 0.1) and 0.6 wrong (|0 - 0.6| = 0.6), one image each: 0.35.
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.6, 0.2]])
    assert expected_calibration_error(np.array([0, 2]), probs) == pytest.approx(0.35)


def test_reliability_bins_count_every_image_once_and_close_the_last_bin() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.34, 0.33, 0.33], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    bins = reliability_bins(np.array([0, 0, 1, 2]), probs)
    assert sum(b["n"] for b in bins) == 4
    assert bins[-1]["n"] == 1 and bins[-1]["confidence"] == 1.0  # 1.0 falls in [0.9, 1.0]
    assert bins[0]["n"] == 0 and bins[0]["accuracy"] is None
    assert bins[5]["accuracy"] == 1.0  # the 0.5/0.5 tie goes to benign, as in decide(): right


def test_ece_renormalises_dequantized_probabilities() -> None:
    # int8 outputs sum to 1 only within a few 1/256 steps; ECE must not depend on that.
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1]])
    labels = np.array([0, 0])
    assert expected_calibration_error(labels, probs * 1.02) == pytest.approx(
        expected_calibration_error(labels, probs))


# --- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_of_a_constant_is_that_constant() -> None:
    assert bootstrap_interval(lambda idx: 0.7, 10, n_resamples=50) == (0.7, 0.7)


def test_bootstrap_interval_by_hand() -> None:
    # Mean of 4 draws from [0, 0, 0, 1]: P(0) = (3/4)^4 = 0.32 > 2.5 %, so the low end is 0;
    # P(mean >= 0.75) = 0.051 > 2.5 % but P(mean = 1) = 0.004 < 2.5 %, so the high end is 0.75.
    data = np.array([0.0, 0.0, 0.0, 1.0])
    assert bootstrap_interval(lambda idx: data[idx].mean(), 4) == (0.0, 0.75)


def test_bootstrap_is_seeded_and_ignores_undefined_resamples() -> None:
    data = np.arange(20, dtype=float)
    mean = lambda idx: data[idx].mean()  # noqa: E731
    assert bootstrap_interval(mean, 20, seed=3) == bootstrap_interval(mean, 20, seed=3)
    undefined_if_first = lambda idx: math.nan if 0 in idx else data[idx].mean()  # noqa: E731
    low, high = bootstrap_interval(undefined_if_first, 20, n_resamples=200)
    assert 0 < low < high < 19


def test_bootstrap_headline_brackets_the_point_estimates() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet([1, 1, 1], size=60) * 0.5 + np.eye(3)[labels] * 0.5
    point = classification_metrics(labels, probs, threshold=0.3)
    intervals = bootstrap_headline(labels, probs, 0.3, n_resamples=300)
    for key, point_key in (("accuracy", "accuracy"), ("macro_f1", "macro_f1"),
                           ("malignant_recall", "malignant_recall_at_threshold")):
        low, high = intervals[key]
        assert low <= point[point_key] <= high


def test_agreement_on_hand_built_arrays() -> None:
    reference = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    probs = np.array([[0.5, 0.4, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.4, 0.5, 0.1]])
    result = agreement(reference, probs)
    assert result == {"agreement": 0.75, "max_abs_dprob": pytest.approx(0.3),
                      "mean_abs_dprob": pytest.approx(1.2 / 12)}
    assert agreement(reference, reference) == {
        "agreement": 1.0, "max_abs_dprob": 0.0, "mean_abs_dprob": 0.0}
    # float32 reference against uint8-step probabilities (the int8 case)
    quantized = np.round(reference * 256) / 256
    assert agreement(reference.astype(np.float32), quantized)["agreement"] == 1.0


def test_ties_count_as_the_class_decide_gives() -> None:
    # Dequantized uint8 outputs tie (BUSI val "benign (270).png": [0.4414, 0.4414, 0.1133]).
    probs = np.array([[0.5, 0.2, 0.3], [0.45, 0.45, 0.10], [0.10, 0.45, 0.45],
                      [0.45, 0.10, 0.45]])
    labels = np.array([0, 1, 2, 2])
    decided = [CLASS_NAMES.index(decide(row).argmax_prediction) for row in probs]
    assert decided == argmax_indices(probs).tolist() == labels.tolist()
    metrics = classification_metrics(labels, probs, threshold=0.9)
    assert metrics["accuracy"] == metrics["macro_f1"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert metrics["malignant_recall_argmax"] == metrics["malignant_specificity_argmax"] == 1.0
    assert malignant_called(probs).tolist() == [False, False, True, True]
    assert lesion_metrics(labels[1:], probs[1:], None)["called_normal"] == 0.0
    assert bootstrap_headline(labels, probs, None, n_resamples=20)["accuracy"] == [1.0, 1.0]
    assert sum(b["accuracy"] * b["n"] for b in reliability_bins(labels, probs) if b["n"]) == 4
    # top-1 agreement uses the same rule for both models: the tie is benign, like [.3, .5, .2]
    assert agreement(probs[1:2], np.array([[0.3, 0.5, 0.2]]))["agreement"] == 1.0


def test_malignant_called_by_argmax_or_threshold() -> None:
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.2, 0.3], [0.6, 0.3, 0.1]])
    assert malignant_called(probs).tolist() == [True, False, False]
    assert malignant_called(probs, threshold=0.3).tolist() == [True, True, False]


# --- benign vs malignant ---------------------------------------------------------------------


def test_auc_benign_vs_malignant_leaves_normals_out() -> None:
    # Lesions ranked benign 0.1, malignant 0.3, benign 0.6, malignant 0.8: 3 of 4 pairs right.
    labels = np.array([1, 2, 1, 2, 0])
    p_malignant = np.array([0.1, 0.3, 0.6, 0.8, 0.99])
    assert auc_benign_vs_malignant(labels, p_malignant) == pytest.approx(0.75)
    roc = roc_benign_vs_malignant(labels, p_malignant)
    assert roc["fpr"][-1] == roc["tpr"][-1] == 1.0 and max(roc["thresholds"]) <= 1.0
    assert math.isnan(auc_benign_vs_malignant(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3])))
    assert roc_benign_vs_malignant(np.array([2, 0]), np.array([0.1, 0.2])) is None


def test_malignant_figures_by_hand() -> None:
    labels = np.array([0, 1, 1, 2, 2])
    probs = np.array([[0.7, 0.1, 0.2],    # normal, P(m) 0.2: called at T = 0.15 only
                      [0.1, 0.8, 0.1],    # benign, never called
                      [0.2, 0.3, 0.5],    # benign, called by argmax: a false positive
                      [0.1, 0.6, 0.3],    # malignant, missed by argmax, caught at T
                      [0.0, 0.1, 0.9]])   # malignant, caught
    figures = malignant_figures(labels, probs, threshold=0.15, n_resamples=50)
    assert figures["class_counts"] == {"normal": 1, "benign": 2, "malignant": 2}
    assert figures["auc_benign_vs_malignant"]["value"] == pytest.approx(0.75)
    argmax, high = figures["argmax"], figures["high_sensitivity"]
    assert (argmax["threshold"], argmax["sensitivity"], argmax["specificity"]) == (
        None, 0.5, pytest.approx(2 / 3))
    assert (high["threshold"], high["sensitivity"], high["specificity"]) == (
        0.15, 1.0, pytest.approx(1 / 3))
    for rule in (argmax, high):
        for key, (low, high_end) in rule["intervals_95"].items():
            assert low <= rule[key] <= high_end, key
    assert malignant_figures(labels, probs, None, n_resamples=20)["high_sensitivity"] is None


def test_a_report_without_the_external_set_says_so() -> None:
    lines = external_section({"external": {"skipped": "external test set not found"}})
    assert lines[0] == "## External hospital (BrEaST-Lesions_USG)"
    assert "Skipped: external test set not found." in lines


# --- targets --------------------------------------------------------------------------------


def _row(p50: float) -> dict:
    stats = {"p50": p50, "p90": p50, "p99": p50}
    return {"by_threads": {"1": {"end_to_end_ms": stats, "model_only_ms": stats,
                                 "throughput_images_per_s": 1000 / p50}}}


def test_target_verdicts_by_hand() -> None:
    latency = {"threads": [1], "rows": {
        "keras (predict)": _row(120.0), "keras (tf.function)": _row(30.0),
        "tflite-float32": _row(14.0), "tflite-int8": _row(10.0), "onnx-int8": _row(9.0),
        "onnx-float32": _row(20.0)}}
    variants = {"keras": {"accuracy": {"accuracy": 0.900}},
                "tflite-int8": {"accuracy": {"accuracy": 0.895},
                                "cold_start": {"seconds": 0.3, "peak_rss_mib": 120.0}}}
    verdicts = {t["name"]: (t["value"], t["met"]) for t in check_targets(variants, latency)}
    assert verdicts["int8 end-to-end vs Keras predict (1 thread)"] == (12.0, True)
    assert verdicts["int8 end-to-end vs TFLite float32 (1 thread)"] == (1.4, False)
    assert verdicts["int8 end-to-end vs ONNX Runtime's fastest (1 thread)"] == (0.9, False)
    assert verdicts["int8 cold start (spawn -> first result)"] == (0.3, True)
    assert verdicts["int8 process peak RSS"] == (120.0, False)
    value, met = verdicts["int8 test accuracy below Keras"]
    assert value == pytest.approx(0.5) and met


def test_targets_without_measurements_are_not_judged() -> None:
    targets = check_targets({}, {"threads": [2], "rows": {}})
    assert targets and all(t["met"] is None for t in targets)


# --- ONNX: leftover Normalization inputs ----------------------------------------------------


def test_freeze_extra_inputs_drops_unread_and_freezes_read_ones(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx (the [bench] extra) not installed")
    keras = pytest.importorskip("keras", reason="keras (the [bench] extra) not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [bench] extra) not installed")
    from onnx import TensorProto, helper

    from benchmarks.onnx_variant import freeze_extra_inputs

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Normalization(mean=[1.0, 2.0, 3.0],
                                                           variance=[4.0, 9.0, 16.0],
                                                           name="normalization")(inputs))
    scope = "functional_1/normalization_1"

    def tensor(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3])

    graph = helper.make_graph(
        [helper.make_node("Sub", ["image", f"{scope}/Sub/y:0"], ["out"])], "g",
        [tensor("image"), tensor(f"{scope}/Sub/y:0"), tensor(f"{scope}/Sqrt/x:0")],
        [tensor("out")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))

    done = freeze_extra_inputs(path, model)

    assert done == {"dropped": [f"{scope}/Sqrt/x:0"], "frozen": [f"{scope}/Sub/y:0"]}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    out = session.run(None, {"image": np.zeros((1, 3), np.float32)})[0]
    np.testing.assert_allclose(out, [[-1.0, -2.0, -3.0]])


def test_an_unknown_extra_input_is_refused(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx (the [bench] extra) not installed")
    keras = pytest.importorskip("keras", reason="keras (the [bench] extra) not installed")
    from onnx import TensorProto, helper

    from benchmarks.onnx_variant import OnnxUnavailable, freeze_extra_inputs

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3])
             for n in ("image", "mystery:0", "out")]
    graph = helper.make_graph([helper.make_node("Add", ["image", "mystery:0"], ["out"])], "g",
                              value[:2], value[2:])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    with pytest.raises(OnnxUnavailable, match="mystery"):
        freeze_extra_inputs(path, model)


# --- a quick run, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, busi_root: Path) -> tuple[dict, Path]:
    manifest_file = models_dir() / MANIFEST_FILENAME
    manifest = read_manifest(manifest_file) if manifest_file.is_file() else {"models": {}}
    keras_entry = manifest["models"].get(f"{manifest.get('default_arch')}/keras")
    if not keras_entry or not (models_dir() / keras_entry["file"]).is_file():
        missing(f"no trained Keras model in {models_dir()} (set EDGE_INFER_MODELS)")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "busi", "bench", "--quick", "--out", str(out),
                           "--busi-dir", str(busi_root)],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / JSON_NAME).read_text()), out


def test_fidelity_counts_disagreements_per_set_and_pooled() -> None:
    rng = np.random.default_rng(0)
    sets = {name: (rng.random((n, 3)), np.arange(n) % 3) for name, n in (("a", 40), ("b", 60))}
    shifted = id(sets["b"][0])  # the "int8" model moves every top-1 by a class on set b only

    def int8(x: np.ndarray) -> np.ndarray:
        return np.roll(x, 1, axis=1) if id(x) == shifted else x

    rows = fidelity_results(sets, lambda x: x, int8)["sets"]
    assert rows["a"]["agreement"] == 1.0 and rows["a"]["auroc_int8"] == rows["a"]["auroc_keras"]
    assert rows["b"]["agreeing"] == 0
    assert rows[POOLED]["images"] == 100 and rows[POOLED]["agreeing"] == 40
    low, high = rows[POOLED]["interval_95"]
    assert low < 0.4 < high and high - low < 0.25


def test_quick_run_measures_int8_fidelity_on_every_site(quick_run: tuple[dict, Path]) -> None:
    fidelity = quick_run[0]["fidelity"]
    if "skipped" in fidelity:
        missing(f"fidelity: {fidelity['skipped']}")
    rows = fidelity["sets"]
    assert set(rows) == {"BUSI val", "BUS-BRA val", "BUSI test", "BUS-BRA test", "BrEaST", POOLED}
    assert rows[POOLED]["images"] == sum(r["images"] for k, r in rows.items() if k != POOLED)
    for row in rows.values():
        assert row["agreeing"] / row["images"] == row["agreement"]
        assert row["interval_95"][0] <= row["agreement"] <= row["interval_95"][1]


ACCURACY_KEYS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class",
                 "confusion_matrix", "threshold", "malignant_recall_at_threshold",
                 "malignant_specificity_at_threshold", "roc_auc_ovr",
                 "expected_calibration_error", "reliability", "intervals_95",
                 "keras_agreement", "accuracy_minus_keras")
LATENCY_KEYS = ("end_to_end_ms", "model_only_ms", "throughput_images_per_s")


def test_quick_run_measures_every_variant(quick_run: tuple[dict, Path]) -> None:
    results, _ = quick_run
    arch_models = read_manifest(models_dir() / MANIFEST_FILENAME)["models"]
    expected = ["keras", "onnx-float32", "onnx-int8"] + [
        f"tflite-{v}" for v in ("float32", "float16", "int8")
        if f"{results['arch']}/{v}" in arch_models]
    for name in expected:  # measured, or missing with a reason in the report
        assert name in results["variants"] or results["skipped"].get(name), name
    for name, info in results["variants"].items():
        assert {"runtime", "precision", "file", "bytes", "threshold", "threshold_source",
                "accuracy", "cold_start", "test_probs"} <= set(info), name
        assert set(ACCURACY_KEYS) <= set(info["accuracy"]), name
        assert set(info["accuracy"]["intervals_95"]) == {"accuracy", "macro_f1",
                                                         "malignant_recall"}
        assert info["cold_start"]["seconds"] > 0 and info["cold_start"]["peak_rss_mib"] > 0
    rows = results["latency"]["rows"]
    assert {"keras (predict)", "keras (tf.function)"} <= set(rows)
    assert set(results["variants"]) - {"keras"} <= set(rows)
    for row in rows.values():
        for threads in results["latency"]["threads"]:
            measured = row["by_threads"][str(threads)]
            assert set(LATENCY_KEYS) <= set(measured)
            assert {"p50", "p90", "p99"} <= set(measured["end_to_end_ms"])
    assert len(results["targets"]) == 3 * len(results["latency"]["threads"]) + 3


def test_quick_run_int8_path_has_no_tensorflow(quick_run: tuple[dict, Path]) -> None:
    variants = quick_run[0]["variants"]
    if "tflite-int8" not in variants:
        missing("no int8 model in the manifest")
    int8, keras = variants["tflite-int8"]["cold_start"], variants["keras"]["cold_start"]
    assert not int8["tensorflow_imported"] and keras["tensorflow_imported"]
    assert int8["peak_rss_mib"] < keras["peak_rss_mib"]  # the child's own peak, not the parent's


def test_quick_run_records_the_machine(quick_run: tuple[dict, Path]) -> None:
    machine = quick_run[0]["machine"]
    assert machine["cpu"] and machine["cores_logical"] >= 1 and machine["python"]
    assert {"numpy", "keras", "ai-edge-litert", "onnxruntime"} <= set(machine["packages"])
    assert {"tensorflow", "tensorflow-cpu"} & set(machine["packages"])


def test_quick_run_report_has_every_section_and_plot(quick_run: tuple[dict, Path]) -> None:
    results, out = quick_run
    text = (out / MARKDOWN_NAME).read_text()
    for heading in HEADINGS:
        assert f"\n{heading}\n" in text, heading
    assert results["plots"] == PLOTS
    for name in PLOTS.values():
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000, name
        assert f"]({name})" in text, name


EXTERNAL_FIGURE_KEYS = {"n", "class_counts", "auc_benign_vs_malignant", "argmax",
                        "high_sensitivity"}


def external_dir() -> Path | None:
    try:
        return resolve_external_dir()
    except FileNotFoundError:
        return None


def test_quick_run_reports_calibration_and_the_site_simulation(
        quick_run: tuple[dict, Path], busi_root: Path) -> None:
    from edge_infer.classifier import Classifier

    results, out = quick_run
    models = read_manifest(models_dir() / MANIFEST_FILENAME)["models"]
    for name, info in results["calibration"].items():
        assert {"temperature", "threshold", "source", "ece", "brier", "nll", "reliability",
                "test", "temperature_best_on_test"} <= set(info), name
        assert info["threshold"] == results["variants"][name]["threshold"]
        for metric in ("ece", "brier", "nll"):
            assert set(info[metric]) == {"before", "after"}
        if name == "keras" or name.startswith("tflite-"):
            variant = "keras" if name == "keras" else name.removeprefix("tflite-")
            assert info["temperature"] == models[f"{results['arch']}/{variant}"].get(
                "temperature"), name
    # the benchmark's int8 probabilities are the runtime's calibrated ones
    if "tflite-int8" in results["variants"]:
        classifier = Classifier(f"{results['arch']}/int8")
        expected = [classifier.predict(busi_root / file).probs
                    for file in results["data"]["test_files"]]
        reported = results["variants"]["tflite-int8"]["test_probs"]
        for mine, theirs in zip(reported, expected):
            assert mine == pytest.approx([theirs[c] for c in CLASS_NAMES], abs=1e-6)
    site = results["site_simulation"]
    if external_dir() is None or "tflite-int8" not in results["variants"]:
        assert set(site) == {"skipped"}
        return
    assert [(run["fit_half"], run["test_half"]) for run in site["runs"]] == [("A", "B"),
                                                                            ("B", "A")]
    assert sum(half["n"] for half in site["halves"].values()) == results["external"]["n"]
    assert site["shipped"]["threshold"] == results["variants"]["tflite-int8"]["threshold"]
    for run in site["runs"]:
        assert run["site"]["high_sensitivity"]["threshold"] == run["profile"]["threshold"]
        assert run["shipped"]["high_sensitivity"]["threshold"] == site["shipped"]["threshold"]
    assert "Target: malignant sensitivity ≥ 0.90" in (out / MARKDOWN_NAME).read_text()


def test_quick_run_has_the_external_hospital_section(quick_run: tuple[dict, Path]) -> None:
    results, out = quick_run
    external = results["external"]
    text = (out / MARKDOWN_NAME).read_text()
    if external_dir() is None:
        assert set(external) == {"skipped"} and f"Skipped: {external['skipped']}." in text
        return
    from benchmarks.run import QUICK
    from edge_infer.inputs import labelled_csv

    all_images = len(labelled_csv(external_dir() / LABELS_FILENAME).items)
    assert external["n"] == len(external["files"]) == len(external["labels"])
    assert external["n"] == -(-all_images // QUICK.external_stride)  # every stride-th image
    assert external["name"] == "BrEaST-Lesions_USG" and "Sci" in external["citation"]
    expected = [name for name in EXTERNAL_VARIANTS if name in results["variants"]]
    assert list(external["variants"]) == expected and "keras" in expected
    for name, info in external["variants"].items():
        assert info["threshold"] == results["variants"][name]["threshold"]  # from the manifest
        assert len(info["external_probs"]) == external["n"]
        for data, n in (("external", external["n"]), ("busi_test", results["data"]["test_images"])):
            figures = info[data]
            assert set(figures) == EXTERNAL_FIGURE_KEYS and figures["n"] == n
            assert figures["high_sensitivity"]["threshold"] == info["threshold"]
            for rule in ("argmax", "high_sensitivity"):
                assert set(figures[rule]["intervals_95"]) == {"sensitivity", "specificity"}
        assert info["busi_test"]["class_counts"] == results["data"]["class_counts"]
    assert text.count("**Δ external − BUSI**") == len(expected)
    assert "Pawłowska" in text


def test_evaluate_reproduces_the_reports_external_figures(quick_run: tuple[dict, Path],
                                                          tmp_path: Path) -> None:
    """`edge-infer evaluate` on the quick run's external images gives the report's int8 row."""
    results = quick_run[0]
    root = external_dir()
    int8 = results["external"].get("variants", {}).get("tflite-int8")
    if root is None or int8 is None:
        missing("no external test set, or no int8 model")
    table = tmp_path / LABELS_FILENAME
    table.write_text("file,label\n" + "".join(
        f"{root / file},{CLASS_NAMES[label]}\n"
        for file, label in zip(results["external"]["files"], results["external"]["labels"])))
    out = tmp_path / "evaluation.json"
    done = subprocess.run([sys.executable, "-c", "from edge_infer.cli import main; main()",
                           "evaluate", "--labels",
                           str(table), "--mode", "high-sensitivity", "--quiet", "--resamples",
                           str(results["settings"]["resamples"]), "--json", str(out)],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = int8["external"]
    assert report["threshold"] == figures["high_sensitivity"]["threshold"]
    assert report["metrics"]["auc_benign_vs_malignant"] == pytest.approx(
        figures["auc_benign_vs_malignant"]["value"])
    assert report["intervals_95"]["auc_benign_vs_malignant"] == pytest.approx(
        figures["auc_benign_vs_malignant"]["interval_95"])
    for mine, theirs in (("malignant_recall", "sensitivity"),
                         ("malignant_specificity", "specificity")):
        assert report["metrics"][mine] == pytest.approx(figures["high_sensitivity"][theirs])
        assert report["intervals_95"][mine] == pytest.approx(
            figures["high_sensitivity"]["intervals_95"][theirs])
    assert report["metrics"]["malignant_recall_argmax"] == pytest.approx(
        figures["argmax"]["sensitivity"])


# --- the web app under load ------------------------------------------------------------------


LOAD_KEYS = {"schema_version", "created", "command", "server", "requests", "clients", "images",
             "timeout_s", "errors", "mismatches", "examples", "duration_s", "requests_per_s",
             "latency_ms", "single_latency_ms", "passed", "machine"}


def test_load_test_answers_equal_single_requests(tmp_path: Path, busi_root: Path,
                                                 manifest: dict) -> None:
    pytest.importorskip("uvicorn", reason="uvicorn (the [serve] extra) not installed")
    from benchmarks import load

    result = CliRunner().invoke(load.main, ["--requests", "16", "--clients", "4", "--timeout",
                                            "120", "--out", str(tmp_path), "--busi-dir",
                                            str(busi_root), "--no-attacks"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / load.JSON_NAME).read_text())
    assert set(results) == LOAD_KEYS
    assert (results["requests"], results["clients"], results["images"]) == (16, 4, 16)
    assert (results["errors"], results["mismatches"], results["examples"]) == (0, 0, [])
    assert results["passed"] and results["requests_per_s"] > 0
    assert results["server"]["workers"] == 2 and results["server"]["threads"] == 1
    assert "--host 127.0.0.1" in results["server"]["command"]
    for stats in (results["latency_ms"], results["single_latency_ms"]):
        assert set(stats) == {"p50", "p95", "p99", "mean", "max"}
        assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert "load_average_at_end" in results["machine"]
    assert "| 16 | 4 | 2 × 1 | 0 | 0 |" in (tmp_path / load.MARKDOWN_NAME).read_text()
